"""Writing an export so that readers never see half of it.

Exports are big and slow to write, and another process (a download, an inference engine) may be
looking at the target while we write: everything is written into a temporary sibling on the same
filesystem and renamed into place, which is atomic for a file and for a new folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``target``; on success it becomes ``target``.

    An existing ``target`` is replaced (moved aside, then deleted), so re-exporting refreshes
    it; on error the staged folder is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staged
        _swap_in(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a path beside ``target`` to write; on success it replaces ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".part", dir=target.parent)
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def _swap_in(staged: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staged, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(staged, target)
    except OSError:
        os.rename(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
