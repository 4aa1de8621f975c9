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


@dataclass(frozen=True)
class FolderArchive:
    members: tuple[_Member, ...]

    @property
    def length(self) -> int:
        return sum(len(m.header) + m.size + _padding(m.size) for m in self.members) + len(_END)

    def chunks(self) -> Iterator[bytes]:
        for member in self.members:
            yield member.header
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


def folder_archive(folder: Path, root_name: str) -> FolderArchive:
    """Every regular file under ``folder`` (symlinks and `*.pt` left out), under ``root_name/``."""
    members = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix == ".pt":
            continue
        stat = path.stat()
        info = tarfile.TarInfo(f"{root_name}/{path.relative_to(folder).as_posix()}")
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        members.append(_Member(path, info.tobuf(format=tarfile.PAX_FORMAT), stat.st_size))
    return FolderArchive(tuple(members))


def _padding(size: int) -> int:
    return -size % BLOCK
