"""A model folder as a tar stream, written as it is read: no copy on disk, no whole file in
memory, and a known length up front (Content-Length, so clients show progress).

An export holds what loads the model: weights, config, tokenizer. Training state (`*.pt`: the
optimizer and RNG of a checkpoint, pickles a receiver should not have to trust) is left out.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
CHUNK = 1 << 20
_END = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class _Member:
    path: Path
    header: bytes
    size: int
    content: bytes | None = None  # sent instead of the file's bytes


@dataclass(frozen=True)
class FolderArchive:
    members: tuple[_Member, ...]

    @property
    def length(self) -> int:
        return sum(len(m.header) + m.size + _padding(m.size) for m in self.members) + len(_END)

    def chunks(self) -> Iterator[bytes]:
        for member in self.members:
            yield member.header
            if member.content is not None:
                yield member.content
                if pad := _padding(member.size):
                    yield b"\0" * pad
                continue
            with member.path.open("rb") as handle:
                left = member.size
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:  # the file shrank under us: the archive would be corrupt
                        raise OSError(f"{member.path} changed while it was being sent")
                    left -= len(chunk)
                    yield chunk
            if pad := _padding(member.size):
                yield b"\0" * pad
        yield _END


def folder_archive(
    folder: Path, root_name: str, replaced: dict[str, bytes] | None = None
) -> FolderArchive:
    """Every regular file under ``folder`` (symlinks and `*.pt` left out), under ``root_name/``;
    ``replaced`` gives other content for some of them, by their path inside ``folder``."""
    members = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix == ".pt":
            continue
        name = path.relative_to(folder).as_posix()
        stat = path.stat()
        content = (replaced or {}).get(name)
        info = tarfile.TarInfo(f"{root_name}/{name}")
        info.size = stat.st_size if content is None else len(content)
        info.mtime, info.mode = int(stat.st_mtime), 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        members.append(_Member(path, header, info.size, content))
    return FolderArchive(tuple(members))


def _padding(size: int) -> int:
    return -size % BLOCK
