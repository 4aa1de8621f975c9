"""The ``text_similarity`` grader's metrics: one score in [0, 1] for an answer and a reference.

BLEU, GLEU and fuzzy matching come from the library the field uses for each, imported when
first used (the core imports without them); ROUGE is computed here:

=============  ================================================================================
fuzzy_match    rapidfuzz ``fuzz.WRatio`` on lower-cased, punctuation-stripped text, / 100: edit
               similarity that also credits the reference found inside a longer answer
               ("Paris" in "The capital is Paris." scores 0.9)
bleu           sacrebleu sentence BLEU (13a tokenizer, exponential smoothing, effective order
               so a short answer is not zero for lacking 4-grams), / 100
gleu           NLTK's sentence GLEU (Google BLEU) on word and punctuation tokens
rouge_1..5     ROUGE-N F-measure (clipped n-gram overlap) on lower-cased Unicode words, no
               stemming: Google's rouge-score (ROUGE-1.5.5's reference port) gives the same
               numbers for English, but its tokenizer drops non-Latin text and its import
               installs absl's logging handler on the process's stderr
rouge_l        ROUGE-L F-measure: the longest common word subsequence
=============  ================================================================================

Refused at check time (`REFUSED_METRICS`): ``cosine`` needs an embeddings model, which this
server does not serve; ``meteor`` needs the WordNet database for synonym matching, which no
package ships and a worker cannot download.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
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


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _f_measure(overlap: int, answer_len: int, reference_len: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / answer_len, overlap / reference_len
    return 2 * precision * recall / (precision + recall)


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def rouge_n(n: int, answer: str, reference: str) -> float:
    """ROUGE-N F-measure: n-grams shared (clipped counts) over the answer's and the reference's."""
    found, expected = _ngrams(_words(answer), n), _ngrams(_words(reference), n)
    overlap = sum((found & expected).values())
    return _f_measure(overlap, sum(found.values()), sum(expected.values()))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure: the longest common word subsequence over both lengths."""
    found, expected = _words(answer), _words(reference)
    return _f_measure(_lcs_length(found, expected), len(found), len(expected))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    **{f"rouge_{n}": functools.partial(rouge_n, n) for n in range(1, 6)},
    "rouge_l": rouge_l,
}


def similarity_score(metric: str, answer: str, reference: str) -> float:
    """``metric``'s score of ``answer`` against ``reference``, in [0, 1].

    Identical texts score 1 under every metric, the empty answer to an empty reference too
    (where the libraries would divide zero by zero).
    """
    if answer == reference:
        return 1.0
    return METRICS[metric](answer, reference)
