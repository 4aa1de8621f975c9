"""Training data: read JSONL, tokenize with the chat template, mask labels, pack, order.

What must hold:

* A line is checked by `tuna_core.dataset.LineChecker`, the schema the upload validated it
  with: a file the upload accepted has no line the worker refuses, and each problem's message
  is the one the upload gives for that line.  Checking goes on past a bad line, as the upload's.
  The file's format decides the method (`DataReport.format` tells): chat and prompt/completion
  examples train supervised, preference examples train DPO.
* A preference example becomes a `PreferencePair`: the input's conversation followed by the
  preferred answer, and the same followed by the non-preferred one, each tokenized as a chat
  whose only trained span is that answer (earlier assistant turns of the input are context).
* Only assistant tokens are trained (label = token id); every other token's label is -100.
  An assistant message with ``"weight": 0`` is context only: its tokens get -100 too.  Where
  each trained message lies in the text is `tuna_core.chat_template.render_training_chat`'s
  job; the full text is tokenized once and each token is labelled by where its characters start.
* A loaded example is its ids (an int32 array) and its trained token spans, not per-token lists.
* Legacy ``{"prompt", "completion"}`` examples are plain text: prompt tokens masked, completion
  tokens plus EOS trained.
* A file is read as a stream, ``TOKENIZE_CHUNK`` examples at a time: the chats of a chunk are
  rendered (Python, one core) while the previous chunk is tokenized in one batched call of the
  fast tokenizer (Rust, all cores); results are the same as one example at a time.
* Truncation policy: none.  An example longer than ``max_seq_len`` tokens is an error
  (``ExampleTooLong``, 1-based example number), reported by ``validate_examples`` before training;
  cutting it would silently train on a conversation without its answer.
* Packing puts several whole examples in one row with ``position_ids`` restarting at 0 for each.
  transformers (>= 4.54) turns restarting position ids into a block-diagonal causal mask (sdpa,
  eager) or varlen attention (flash-attention), so no token attends across examples and the loss
  equals unpacked training.  Targets are shifted inside each example before packing, so no
  example is trained to predict the first token of the next one.
* Example order per epoch is a permutation seeded by (seed, epoch); a batch is fully determined
  by (epoch, batch index), which is what a checkpoint stores to resume.

This module needs a tokenizer but not torch.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna_core.chat_template import RenderedChat, render_training_chat
from tuna_core.dataset import (
    METHOD_FORMATS,
    DatasetFormat,
    ExampleError,
    LineChecker,
    check_example,
)

IGNORE_INDEX = -100
# Examples per batched tokenizer call: enough to keep every core busy, few enough to bound memory.
TOKENIZE_CHUNK = 1000


def _where(example_number: int, line: int) -> str:
    """ "Example 3", or "Example 3 (line 5)" where blank lines put the two apart."""
    return f"Example {example_number}" + (f" (line {line})" if line != example_number else "")


class InvalidExample(ValueError):
    """An example the engine cannot train on; ``code`` is a stable machine-readable reason."""

    code = "invalid_format"

    def __init__(
        self, example_number: int, reason: str, *, line: int | None = None, code: str | None = None
    ) -> None:
        self.example_number = example_number
        self.line = example_number if line is None else line
        self.reason = reason
        if code is not None:
            self.code = code
        super().__init__(f"{_where(example_number, self.line)}: {reason}")


class ExampleTooLong(InvalidExample):
    code = "example_too_long"


class NoTrainableTokens(InvalidExample):
    code = "no_trainable_tokens"


Span = tuple[int, int]  # [start, stop) token indices


def token_ids(ids: Iterable[int]) -> array[int]:
    """Token ids as a compact array (see TokenizedExample)."""
    return array("i", ids)


@dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids and the spans of them it is trained on.

    ``trained`` holds ascending, disjoint, non-empty ``[start, stop)`` token ranges:
    ``labels[t]`` is ``input_ids[t]`` inside one and -100 elsewhere.  Loaded examples keep their
    ids in an ``array('i')`` (``token_ids``) and their labels as spans: 4 bytes a token, where
    lists of ids and labels took 44 (a pointer each and an int object per id), which for a large
    file was gigabytes, and allocating those ints cost more time than the array does.
    """

    input_ids: Sequence[int]
    trained: tuple[Span, ...]

    @classmethod
    def from_labels(cls, input_ids: Sequence[int], labels: Sequence[int]) -> TokenizedExample:
        """The example whose labels are ``labels`` (each ``input_ids[t]`` or -100)."""
        if len(labels) != len(input_ids):
            raise ValueError("labels and input_ids differ in length")
        spans: list[Span] = []
        for t, label in enumerate(labels):
            if label == IGNORE_INDEX:
                continue
            if label != input_ids[t]:
                raise ValueError(f"label {t} is neither -100 nor the token there")
            if spans and spans[-1][1] == t:
                spans[-1] = (spans[-1][0], t + 1)
            else:
                spans.append((t, t + 1))
        return cls(input_ids, tuple(spans))

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(stop - start for start, stop in self.trained)

    @property
    def labels(self) -> list[int]:
        labels = [IGNORE_INDEX] * len(self.input_ids)
        for start, stop in self.trained:
            labels[start:stop] = self.input_ids[start:stop]
        return labels

    def targets(self) -> list[int]:
        """Next-token targets: position t is trained to predict ``labels[t + 1]``."""
        targets = [IGNORE_INDEX] * len(self.input_ids)
        for start, stop in self.trained:
            first = max(start - 1, 0)  # nothing predicts the first token
            targets[first : stop - 1] = self.input_ids[first + 1 : stop]
        return targets


@dataclass(frozen=True)
class PreferencePair:
    """One preference example: the same prompt answered the preferred way (``chosen``) and the
    non-preferred way (``rejected``), each trained on its answer only."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def n_tokens(self) -> int:
        return self.chosen.n_tokens + self.rejected.n_tokens


def preference_chats(example: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checked preference example as two chat examples, (preferred, non-preferred), whose only
    trained message is the answer: the input's own assistant turns get weight 0."""
    source = example["input"]
    context = [
        {**message, "weight": 0} if message.get("role") == "assistant" else message
        for message in source["messages"]
    ]
    extra = {key: value for key, value in source.items() if key != "messages"}
    return tuple(  # type: ignore[return-value]
        {**extra, "messages": [*context, example[key][0]]}
        for key in ("preferred_output", "non_preferred_output")
    )


Unit = TokenizedExample | PreferencePair  # what one line of a file trains on


@dataclass(frozen=True)
class DataProblem:
    example_number: int  # 1-based, counting non-blank lines
    line: int  # 1-based line of the file
    code: str  # invalid_format | example_too_long | no_trainable_tokens | unsupported
    reason: str  # what is wrong, e.g. "messages[1].content: missing"

    @property
    def message(self) -> str:
        return f"{_where(self.example_number, self.line)}: {self.reason}"


@dataclass
class DataReport:
    n_examples: int
    n_tokens: int
    problems: list[DataProblem] = field(default_factory=list)
    # The file's format (that of its first valid line).
    format: DatasetFormat | None = None
    # Every example, tokenized, when asked for and the file has no problems: training can start
    # from them instead of tokenizing the file a second time.
    examples: list[Unit] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------------------------
# Tokenizing


def _first_token_from(encoding: Any, char: int) -> int:
    """Index of the first token starting at or after ``char`` (``len`` if none does).

    Asks the Rust encoding which token holds ``char`` (two calls, no offsets copied into
    Python: that copy alone cost a quarter of the tokenizer's time); where no token holds it,
    the end of the text or, for text a normalizer dropped, a binary search over the token
    starts, which never decrease along an encoding.
    """
    token = encoding.char_to_token(char)
    if token is not None:
        return token if encoding.token_to_chars(token)[0] >= char else token + 1
    n_tokens = len(encoding)
    if not n_tokens or encoding.token_to_chars(n_tokens - 1)[1] <= char:
        return n_tokens
    return bisect.bisect_left(range(n_tokens), char, key=lambda t: encoding.token_to_chars(t)[0])


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[Any]:
    """The Rust encodings of ``texts`` that ``tokenizer(texts, add_special_tokens=False)`` makes.

    Calling the fast tokenizer's backend directly skips transformers copying every encoding's
    ids, attention mask and offsets into Python lists, which cost a fifth of the encoding time.
    """
    backend = tokenizer.backend_tokenizer
    # What transformers sets before each call: no truncation or padding (a tokenizer.json may
    # ship with them on) and the tokenizer's choice of splitting special-token text.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    # The template writes any BOS itself; adding special tokens again would double it.
    return list(backend.encode_batch(texts, add_special_tokens=False))


def _labelled(encoding: Any, spans: list[tuple[int, int]]) -> TokenizedExample:
    """A chat's tokens, trained where they start inside one of its assistant ``spans``."""
    trained = []
    for start, end in spans:
        first, stop = _first_token_from(encoding, start), _first_token_from(encoding, end)
        if first < stop:
            trained.append((first, stop))
    return TokenizedExample(token_ids(encoding.ids), tuple(trained))


def tokenize_rendered(tokenizer: Any, chats: Sequence[RenderedChat]) -> list[TokenizedExample]:
    """Tokenize rendered chats in one batched call, with assistant-only labels.

    The fast tokenizer encodes the batch on all cores (its Rust threads, unless
    ``TOKENIZERS_PARALLELISM`` is false).
    """
    encodings = _encode_batch(tokenizer, [chat.text for chat in chats])
    return [_labelled(e, chat.spans) for e, chat in zip(encodings, chats, strict=True)]


def tokenize_chat(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """Tokenize one checked ``{"messages": [...]}`` example with assistant-only labels."""
    return tokenize_rendered(tokenizer, [render_training_chat(tokenizer, example)])[0]


def tokenize_legacy(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """``{"prompt", "completion"}``: plain text, prompt masked, completion + EOS trained."""
    prompt_ids = list(tokenizer(example["prompt"], add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(example["completion"], add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    n_tokens = len(prompt_ids) + len(completion_ids)
    trained = ((len(prompt_ids), n_tokens),) if completion_ids else ()
    return TokenizedExample(token_ids(prompt_ids + completion_ids), trained)


def tokenize_example(tokenizer: Any, example: Any) -> TokenizedExample:
    """Check one example (ExampleError, a ValueError) and tokenize it by its format."""
    fmt = check_example(example)
    if fmt is DatasetFormat.CHAT:
        return tokenize_chat(tokenizer, example)
    if fmt is DatasetFormat.COMPLETION:
        return tokenize_legacy(tokenizer, example)
    raise ValueError(f"a {fmt} example is not trained by supervised fine-tuning")


def _problem(
    number: int, line: int, example: TokenizedExample, max_seq_len: int, part: str = ""
) -> InvalidExample | None:
    """Why ``example`` cannot be trained on, if it cannot; ``part`` names the sequence of a
    preference example ("preferred_output") in the message."""
    subject = f"{part} " if part else ""
    if example.n_tokens > max_seq_len:
        return ExampleTooLong(
            number,
            f"{subject}has {example.n_tokens} tokens, more than the context of {max_seq_len}",
            line=line,
        )
    if example.n_trainable == 0:  # the schema asks for a trained message; its text may be empty
        return NoTrainableTokens(number, f"{subject}has no trainable tokens", line=line)
    return None


@dataclass(frozen=True)
class _PendingPair:
    """A preference example's two chats, rendered."""

    chosen: RenderedChat
    rejected: RenderedChat


# An example on its way through the pipeline: a rendered chat, a rendered preference pair, a
# legacy example, or the reason it cannot be trained on; once through the tokenizer, a chat's
# Rust encoding takes its place (a pair's: two), a legacy example is a TokenizedExample.
_Pending = RenderedChat | _PendingPair | dict[str, Any] | InvalidExample
_Entry = tuple[int, int, _Pending]  # (example number, line, pending)
_Encoded = Any
# (example number, line, the example or its problem)
_Checked = tuple[int, int, Unit | InvalidExample]


class _Lines:
    """The examples of a file, each checked as the upload checked it (`LineChecker`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checker = LineChecker()

    @property
    def format(self) -> DatasetFormat | None:
        return self.checker.format

    def pending(self, tokenizer: Any) -> Iterator[_Entry]:
        checker = self.checker
        with self.path.open("rb") as fh:
            for line, raw in enumerate(fh, start=1):
                try:
                    # Without its newline, as the upload splits lines: JSON's error columns agree.
                    example = checker.check(line, raw.removesuffix(b"\n"))
                except ExampleError as exc:
                    number = checker.example_count
                    yield number, line, InvalidExample(number, str(exc), line=line, code=exc.code)
                    continue
                if example is None:
                    continue  # a blank line
                number = checker.example_count
                if example.format is DatasetFormat.CHAT:
                    try:
                        yield number, line, render_training_chat(tokenizer, example.data)
                    except ValueError as exc:  # the template cannot render it
                        yield number, line, InvalidExample(number, str(exc), line=line)
                elif example.format is DatasetFormat.COMPLETION:
                    yield number, line, example.data
                else:
                    try:
                        chosen, rejected = preference_chats(example.data)
                        pair = _PendingPair(
                            render_training_chat(tokenizer, chosen),
                            render_training_chat(tokenizer, rejected),
                        )
                    except ValueError as exc:  # the template cannot render it
                        yield number, line, InvalidExample(number, str(exc), line=line)
                    else:
                        yield number, line, pair


def _rendered_chunks(lines: _Lines, tokenizer: Any) -> Iterator[list[_Entry]]:
    """The examples of a file in chunks of ``TOKENIZE_CHUNK``, chats rendered."""
    chunk: list[_Entry] = []
    for entry in lines.pending(tokenizer):
        chunk.append(entry)
        if len(chunk) == TOKENIZE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode_chunk(tokenizer: Any, chunk: list[_Entry]) -> list[_Encoded]:
    """The tokenizer's share of a chunk: chats (and pairs' chats) in one batched call, legacy
    examples one by one."""
    texts: list[str] = []
    for _, _, pending in chunk:
        if isinstance(pending, RenderedChat):
            texts.append(pending.text)
        elif isinstance(pending, _PendingPair):
            texts += (pending.chosen.text, pending.rejected.text)
    encodings = iter(_encode_batch(tokenizer, texts))
    encoded: list[_Encoded] = []
    for _, _, pending in chunk:
        if isinstance(pending, RenderedChat):
            encoded.append(next(encodings))
        elif isinstance(pending, _PendingPair):
            encoded.append((next(encodings), next(encodings)))
        elif isinstance(pending, dict):
            encoded.append(tokenize_legacy(tokenizer, pending))
        else:
            encoded.append(pending)
    return encoded


def _checked_chunk(
    chunk: list[_Entry], encoded: Future[list[_Encoded]], max_seq_len: int
) -> Iterator[_Checked]:
    for (number, line, pending), result in zip(chunk, encoded.result(), strict=True):
        if isinstance(pending, RenderedChat):
            result = _labelled(result, pending.spans)
        if isinstance(pending, _PendingPair):
            pair = PreferencePair(
                _labelled(result[0], pending.chosen.spans),
                _labelled(result[1], pending.rejected.spans),
            )
            result = (
                _problem(number, line, pair.chosen, max_seq_len, "preferred_output")
                or _problem(number, line, pair.rejected, max_seq_len, "non_preferred_output")
                or pair
            )
        elif isinstance(result, TokenizedExample):
            result = _problem(number, line, result, max_seq_len) or result
        yield number, line, result


def _checked_examples(lines: _Lines, tokenizer: Any, max_seq_len: int) -> Iterator[_Checked]:
    """Every example of the file in order, tokenized and checked, or its problem.

    The tokenizer works on one chunk on a second thread while this one renders the next chunk
    and labels the previous one: the batched call runs in Rust threads on all cores with the
    GIL released, rendering and labelling are Python, so the two overlap instead of adding up.
    At most three chunks are held at a time.  Every tokenizer call stays on that one thread: a
    Rust tokenizer must not be reconfigured (as transformers does before each call) while
    another thread encodes with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as tokenizer_thread:
        previous: tuple[list[_Entry], Future[list[_Encoded]]] | None = None
        for chunk in _rendered_chunks(lines, tokenizer):
            encoded = tokenizer_thread.submit(_encode_chunk, tokenizer, chunk)
            if previous is not None:
                yield from _checked_chunk(*previous, max_seq_len)
            previous = chunk, encoded
        if previous is not None:
            yield from _checked_chunk(*previous, max_seq_len)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file is tokenized.

    Loading allocates a few objects per example (the ids read out of each encoding, spans,
    parsed JSON) and no reference cycles; the collector, triggered by those allocations, would
    walk every live object again and again (a sixth of the tokenizing time when examples were
    lists). Reference counting still frees everything as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_examples(
    path: Path, tokenizer: Any, max_seq_len: int, method: str = "supervised"
) -> list[Any]:
    """Every example of ``path``, tokenized (`TokenizedExample`s for supervised fine-tuning,
    `PreferencePair`s for DPO); the first problem raises (an InvalidExample), and so does an
    example of a format ``method`` does not train on."""
    examples: list[Any] = []
    lines = _Lines(Path(path))
    trained = METHOD_FORMATS[method]
    with _collector_paused():
        for number, line, example in _checked_examples(lines, tokenizer, max_seq_len):
            if isinstance(example, InvalidExample):
                raise example
            if lines.format not in trained:
                formats = " or ".join(sorted(trained))
                raise InvalidExample(
                    number,
                    f"is a {lines.format} example, which the {method} method does not train "
                    f"(it trains on {formats} examples)",
                    line=line,
                    code="unsupported_format",
                )
            examples.append(example)
    return examples


def validate_examples(
    path: Path, tokenizer: Any, max_seq_len: int, keep_examples: bool = False
) -> DataReport:
    """Check every example and report all problems (not just the first), for the API to show;
    with ``keep_examples``, a file without problems comes back tokenized too.
    """
    report = DataReport(n_examples=0, n_tokens=0)
    kept: list[Unit] = []
    lines = _Lines(Path(path))
    with _collector_paused():
        for number, line, example in _checked_examples(lines, tokenizer, max_seq_len):
            report.n_examples = number
            if isinstance(example, InvalidExample):
                report.problems.append(DataProblem(number, line, example.code, example.reason))
                kept.clear()  # nothing will be handed over: free them now
            else:
                report.n_tokens += example.n_tokens
                if keep_examples and report.ok:
                    kept.append(example)
    report.format = lines.format
    if keep_examples and report.ok:
        report.examples = kept
    return report


# --------------------------------------------------------------------------------------------
# Packing and ordering


@dataclass
class PackedRow:
    """Several whole examples in one sequence; ``position_ids`` restart at 0 for each."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # already shifted: -100 = no loss here
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens of each example, in order

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE_INDEX)

    def add(self, example: TokenizedExample) -> None:
        self.input_ids.extend(example.input_ids)
        self.targets.extend(example.targets())
        self.position_ids.extend(range(example.n_tokens))
        self.lengths.append(example.n_tokens)


def pack_examples(
    examples: Sequence[TokenizedExample], max_tokens_per_row: int | None = None
) -> list[PackedRow]:
    """Pack examples, in order, into as few rows of at most ``max_tokens_per_row`` as greedily fit
    (all in one row when it is None).

    Rows are not padded: each row is its own forward pass, so there is no padding at all.  An
    example longer than a row gets a row to itself (examples were checked against the context).
    """
    rows: list[PackedRow] = []
    for example in examples:
        full = (
            max_tokens_per_row is not None
            and rows
            and rows[-1].n_tokens + example.n_tokens > max_tokens_per_row
        )
        if not rows or full:
            rows.append(PackedRow())
        rows[-1].add(example)
    return rows


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``epoch``: a shuffle that depends only on (seed, epoch)."""
    order = list(range(n_examples))
    random.Random(f"tuna:{seed}:{epoch}").shuffle(order)
    return order


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each batch of ``epoch``; the last batch may be smaller."""
    order = epoch_order(n_examples, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
