"""Streaming `multipart/form-data` reader for uploads of up to hundreds of megabytes.

Starlette's form parser spools the whole file before the endpoint sees it; here each chunk goes
straight to a temporary file in storage (and, for fine-tune files, through the dataset
validator) as it arrives, so memory stays flat whatever the size and an oversized upload is
refused as soon as it crosses the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from app.errors import InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
# Multipart framing (boundaries, part headers, small fields) on top of the file itself.
FRAMING_ALLOWANCE = 1024 * 1024


class ChunkSink(Protocol):
    def feed(self, chunk: bytes) -> None: ...


@dataclass
class UploadedFile:
    temp_path: Path
    filename: str
    size: int


@dataclass
class MultipartUpload:
    fields: dict[str, str] = field(default_factory=dict)
    file: UploadedFile | None = None


class _Reader:
    """Collects small fields in memory and streams the `file` part to disk."""

    def __init__(self, temp_path: Path, max_bytes: int, sink_for_fields: SinkFactory) -> None:
        self.temp_path = temp_path
        self.max_bytes = max_bytes
        self.sink_for_fields = sink_for_fields
        self.result = MultipartUpload()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._field_value = bytearray()
        self._out: IO[bytes] | None = None
        self._sink: ChunkSink | None = None
        self._file_size = 0
        self.too_large = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._field_value = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._name == "file" and filename is not None:
            if self.result.file is not None:
                raise InvalidRequest("Only one 'file' part may be sent.", param="file")
            self._out = open(self.temp_path, "wb")  # noqa: SIM115 - closed in _part_end/close
            self._sink = self.sink_for_fields(self.result.fields)
            self.result.file = UploadedFile(self.temp_path, filename.decode("utf-8", "replace"), 0)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._file_size += end - start
            if self._file_size > self.max_bytes:
                self.too_large = True
                return
            chunk = data[start:end]
            self._out.write(chunk)
            if self._sink is not None:
                self._sink.feed(chunk)
        elif len(self._field_value) + (end - start) <= MAX_FIELD_BYTES:
            self._field_value.extend(data[start:end])
        else:
            raise InvalidRequest(f"Form field '{self._name}' is too long.", param=self._name)

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            assert self.result.file is not None
            self.result.file.size = self._file_size
        elif self._name:
            self.result.fields[self._name] = self._field_value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class SinkFactory(Protocol):
    def __call__(self, fields_so_far: dict[str, str]) -> ChunkSink | None: ...


def _no_sink(fields_so_far: dict[str, str]) -> ChunkSink | None:
    return None


async def read_multipart(
    request: Request, temp_path: Path, max_bytes: int, sink_for_fields: SinkFactory = _no_sink
) -> MultipartUpload:
    """Read the request body; on any failure the temporary file is removed before raising.

    `sink_for_fields` is asked, when the file part starts, for an object to feed the file's
    bytes to (given the fields that came before it), so validation can run during the upload.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest(
            "The request must be multipart/form-data with a 'file' and a 'purpose' field.",
            param="file",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FRAMING_ALLOWANCE:
        raise _too_large(max_bytes)

    reader = _Reader(temp_path, max_bytes, sink_for_fields)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            # Parsing, writing and validating are blocking work: keep them off the event loop.
            await run_in_threadpool(parser.write, chunk)
            if reader.too_large:
                raise _too_large(max_bytes)
        parser.finalize()
    except ClientDisconnect:
        reader.close()
        temp_path.unlink(missing_ok=True)
        raise
    except Exception as exc:
        reader.close()
        temp_path.unlink(missing_ok=True)
        if isinstance(exc, InvalidRequest | PayloadTooLarge):
            raise
        raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from exc
    reader.close()
    return reader.result


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is too large: the limit is {max_bytes} bytes.",
        param="file",
        code="file_too_large",
    )
