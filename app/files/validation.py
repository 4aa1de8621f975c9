"""Upload-time validation of fine-tuning JSONL datasets: the framing around `tuna_core.dataset`.

A `fine-tune` file is checked line by line while it streams in (`DatasetValidator.feed`), so a
bad file is refused with a useful 400 before a job ever sees it, and memory stays bounded by the
longest line whatever the file size.  What a valid line is, and every message for one that is
not, is `tuna_core.dataset.LineChecker`'s, the same the worker checks again before training.

Framing
    Lines are split on ``b"\\n"``. A ``"\\r"`` before the newline is harmless (CRLF files are
    fine: JSON treats it as whitespace, and whitespace-only lines are blank). Line numbers are
    1-based. A file with no example gets the single error ``"file is empty"`` on line 0 (line 0 =
    "the file as a whole"). A line longer than ``max_line_bytes`` (even a blank one) is refused
    without being buffered: ``"line too long (N bytes; the limit is M)"``.

Each line reports at most one error, the first problem found, so ``error_count`` is the number
of lines with errors.  The minimum number of examples a *job* needs is not checked here: the same
file may be a small validation file. That is for the job, using ``example_count``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tuna_core.dataset import DatasetFormat, ExampleError, LineChecker

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DatasetFormat",
    "DatasetValidator",
    "LineError",
    "ValidationReport",
    "validate_file",
]

#: A single line (one example) may be this long. Memory use is about a few times this.
DEFAULT_MAX_LINE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based line number in the file; 0 for the file as a whole ("file is empty")
    message: str


@dataclass
class ValidationReport:
    # The format of the first valid line; when no line is valid, that of the first line whose
    # format could be told; None when not even that.
    format: DatasetFormat | None
    example_count: int  # non-blank lines, valid or not
    errors: list[LineError] = field(default_factory=list)  # the first `max_errors` of them
    error_count: int = 0  # every error, also those beyond the cap

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self, limit: int = 5) -> str:
        """One human message, e.g. for the 400 answer to an upload."""
        if self.ok:
            kind = f"{self.format} " if self.format else ""
            return f"Training file is valid: {self.example_count} {kind}example(s)."
        shown = self.errors[: max(limit, 0)]
        if self.error_count == 1 and shown and shown[0].line == 0:
            return f"Invalid training file: {shown[0].message}."
        parts = [f"Invalid training file: {self.error_count} line(s) have errors."]
        for err in shown:
            parts.append(f"Line {err.line}: {err.message}." if err.line else f"{err.message}.")
        more = self.error_count - len(shown)
        if more > 0:
            parts.append(f"(and {more} more)")
        return " ".join(parts)


def _join_and_clear(pieces: list[bytes]) -> bytes:
    line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    return line


class DatasetValidator:
    """Incremental validator: `feed` it the file's bytes in any chunks, then `finish`.

    The report does not depend on where the chunk boundaries fall. Memory is bounded by the
    longest line (and by `max_line_bytes` for lines longer than that, which are refused
    without being buffered).
    """

    def __init__(self, max_errors: int = 20, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.max_errors = max(0, max_errors)
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # pieces of the current, unfinished line
        self._pending_len = 0
        self._overflow = False  # the current line is already too long; it is being skipped
        self._line_no = 0  # number of the last line that was completed
        self._lines = LineChecker()
        self._errors: list[LineError] = []
        self._error_count = 0
        self._report: ValidationReport | None = None

    # -- input

    def feed(self, chunk: bytes) -> None:
        if self._report is not None:
            raise RuntimeError("feed() called after finish()")
        if not chunk:
            return
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if b"\n" not in chunk:
            self._add_piece(chunk)
            return
        lines = chunk.split(b"\n")
        last = lines.pop()
        start = 0
        if self._pending or self._overflow:
            self._add_piece(lines[0])
            self._end_line()
            start = 1
        line_no = self._line_no
        limit = self.max_line_bytes
        check = self._lines.check
        for line in islice(lines, start, None):
            line_no += 1
            if len(line) > limit:  # first, as for a long line that spans chunks
                self._too_long(line_no, len(line))
            elif line and not line.isspace():
                try:
                    check(line_no, line)
                except ExampleError as exc:
                    self._error(line_no, str(exc))
        self._line_no = line_no
        if last:
            self._add_piece(last)

    def finish(self) -> ValidationReport:
        if self._report is None:
            if self._pending or self._overflow:
                self._end_line()
            lines = self._lines
            if lines.example_count == 0:
                self._error(0, "file is empty")
            self._report = ValidationReport(
                format=lines.format or lines.first_seen,
                example_count=lines.example_count,
                errors=list(self._errors),
                error_count=self._error_count,
            )
        return self._report

    # -- framing

    def _add_piece(self, piece: bytes) -> None:
        if not piece:
            return
        if self._overflow:
            self._pending_len += len(piece)
            return
        self._pending_len += len(piece)
        if self._pending_len > self.max_line_bytes:
            self._pending.clear()
            self._overflow = True
            return
        self._pending.append(piece)

    def _end_line(self) -> None:
        """Completes the pending line (the piece after it has not been seen yet)."""
        self._line_no += 1
        if self._overflow:
            size = self._pending_len
            self._overflow = False
            self._pending_len = 0
            self._too_long(self._line_no, size)
            return
        pieces = self._pending
        self._pending = []
        self._pending_len = 0
        if pieces:
            # No local keeps the joined line, so the checker can drop it once it is decoded.
            try:
                self._lines.check(self._line_no, _join_and_clear(pieces))
            except ExampleError as exc:
                self._error(self._line_no, str(exc))

    def _too_long(self, line_no: int, size: int) -> None:
        self._lines.count_unread()
        self._error(line_no, f"line too long ({size} bytes; the limit is {self.max_line_bytes})")

    def _error(self, line_no: int, message: str) -> None:
        self._error_count += 1
        if len(self._errors) < self.max_errors:
            self._errors.append(LineError(line_no, message))


def validate_file(
    path: Path,
    *,
    chunk_size: int = 1 << 20,
    max_errors: int = 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ValidationReport:
    """Validates a JSONL file on disk, reading it in `chunk_size` pieces."""
    validator = DatasetValidator(max_errors=max_errors, max_line_bytes=max_line_bytes)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            validator.feed(chunk)
    return validator.finish()
