"""The board's file sandbox: every path a user types is resolved under --root and refused outside it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class OutsideRoot(ValueError):
    """A path that resolves outside the board's --root (or is otherwise unusable)."""


class Root:
    """The folder the board reads and writes in; children run with it as their working directory."""

    def __init__(self, path: str):
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise OutsideRoot(f"--root {path}: no such directory")
        self.state = self.path / ".cogcot-board"  # the board's own files: run logs and state

    def resolve(self, value: str, what: str = "path") -> Path:
        """`value` (relative to the root, or absolute) as an absolute path, refused when outside the root."""
        p = Path(os.path.expanduser(value.strip()))
        full = (p if p.is_absolute() else self.path / p).resolve()
        if full != self.path and self.path not in full.parents:
            raise OutsideRoot(f"{what} {value}: outside the board's root {self.path}")
        return full

    def existing(self, value: str, what: str = "path", kind: str = "file") -> Path:
        """`resolve`, and the path must exist as a file (kind='file') or folder (kind='dir')."""
        full = self.resolve(value, what)
        ok = full.is_file() if kind == "file" else full.is_dir()
        if not ok:
            raise OutsideRoot(f"{what} {value}: no such {'file' if kind == 'file' else 'directory'} under {self.path}")
        return full

    def relative(self, path) -> str:
        """How a path under the root is shown: relative to it when possible."""
        try:
            return str(Path(path).resolve().relative_to(self.path))
        except ValueError:
            return str(path)

    def state_dir(self, kind: str) -> Path:
        d = self.state / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    def checkpoints(self, limit: int = 50) -> list:
        """Checkpoint folders (holding model_config.json) under the root, newest first, up to 3 levels deep."""
        found = []
        for depth in ("*", "*/*", "*/*/*"):
            for cfg in self.path.glob(f"{depth}/model_config.json"):
                if ".cogcot-board" not in cfg.parts:
                    found.append(cfg.parent)
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [self.relative(p) for p in found[:limit]]


def maybe(root: Root, value: Optional[str], what: str) -> Optional[Path]:
    """`root.resolve` for an optional field: None when empty."""
    return root.resolve(value, what) if value and value.strip() else None
