"""The ``text_similarity`` grader's metrics: one score in [0, 1] for an answer and a reference.

Each metric is computed by the library the field uses for it, imported when first used (the
core imports without them):

=============  ================================================================================
fuzzy_match    rapidfuzz ``fuzz.WRatio`` on lower-cased, punctuation-stripped text, / 100: edit
               similarity that also credits the reference found inside a longer answer
               ("Paris" in "The capital is Paris." scores 0.9)
bleu           sacrebleu sentence BLEU (13a tokenizer, exponential smoothing, effective order
               so a short answer is not zero for lacking 4-grams), / 100
gleu           NLTK's sentence GLEU (Google BLEU) on word and punctuation tokens
rouge_1..5     Google's rouge-score ROUGE-N F-measure, no stemming, words as lower-cased
               Unicode word characters (the library's own tokenizer drops non-Latin text)
rouge_l        the same, longest common subsequence (ROUGE-L) F-measure
=============  ================================================================================

Refused at check time (`REFUSED_METRICS`): ``cosine`` needs an embeddings model, which this
server does not serve; ``meteor`` needs the WordNet database for synonym matching, which no
package ships and a worker cannot download.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+|[^\w\s]")

REFUSED_METRICS = {
    "cosine": "the cosine metric is not supported by this server: it needs an embeddings model,"
    " and this server serves none",
    "meteor": "the meteor metric is not supported by this server: it needs the WordNet database,"
    " which no installable package ships and a worker cannot download",
}


def _clamp(score: float) -> float:
    # Libraries report 100.00000000000004 for a perfect match; a score is in [0, 1].
    return min(1.0, max(0.0, float(score)))


def fuzzy_match(answer: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return _clamp(fuzz.WRatio(answer, reference, processor=utils.default_process) / 100)


@functools.cache
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def bleu(answer: str, reference: str) -> float:
    return _clamp(_bleu().sentence_score(answer, [reference]).score / 100)


def gleu(answer: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, expected = _TOKEN.findall(answer), _TOKEN.findall(reference)
    if not hypothesis or not expected:
        return 1.0 if hypothesis == expected else 0.0
    return _clamp(sentence_gleu([expected], hypothesis))


class _WordTokenizer:
    """Lower-cased Unicode words: rouge-score's own tokenizer keeps ``[a-z0-9]`` only."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    kinds = [f"rouge{n}" for n in range(1, 6)] + ["rougeL"]
    return rouge_scorer.RougeScorer(kinds, use_stemmer=False, tokenizer=_WordTokenizer())


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(answer: str, reference: str) -> float:
        # rouge-score's argument order is (target, prediction).
        return _clamp(_rouge_scorer().score(reference, answer)[kind].fmeasure)

    score.__name__ = kind
    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}


def similarity(metric: str, answer: str, reference: str) -> float:
    """``metric``'s score of ``answer`` against ``reference``, in [0, 1]."""
    return METRICS[metric](answer, reference)
