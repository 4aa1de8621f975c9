"""Local file storage under server-chosen names.

Uploads are written to `tmp/` first and renamed into place only when their row commits, so a
request cut off mid-stream never leaves a visible half file. In production the root is a shared
volume (NFS, a mounted bucket) seen by the API and every worker.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def new_temp_path(self) -> Path:
        return self.tmp_dir / uuid.uuid4().hex

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def key_of(self, path: Path) -> str:
        """The key of a path inside the root (a worker's checkpoint or model folder)."""
        return str(path.resolve().relative_to(self.root))

    def put(self, temp_path: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size
