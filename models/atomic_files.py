"""Crash-safe checkpoint writing: an iteration is written into a temporary directory beside its final
place and renamed when every file in it is complete and on disk; `latest` is replaced atomically after.

A crash at any moment leaves either the previous state or the new one: `latest` never names a partial
iteration, and a partial one is never under its final name (`.partial-<iteration>` is removed by the
next save)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

PARTIAL_PREFIX = ".partial-"


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (new names, renames) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync directories
    finally:
        os.close(fd)


def fsync_tree(path: Union[str, os.PathLike]) -> None:
    """fsync every file under `path` and the directories holding them."""
    path = Path(path)
    for root, _, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Replace `path` with `text` in one step: a reader sees the old content or the new, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def partial_dir(ckpt_dir: Union[str, os.PathLike], iteration: Union[int, str]) -> Path:
    """Where iteration `iteration` is written before it is published (removed first if a crash left one)."""
    tmp = Path(ckpt_dir) / f"{PARTIAL_PREFIX}{iteration}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish_iteration(ckpt_dir: Union[str, os.PathLike], iteration: Union[int, str], written: Path) -> Path:
    """Sync `written` (a partial_dir), rename it to `<ckpt_dir>/<iteration>` (replacing an older save of
    the same iteration) and then point `latest` at it. Returns the final directory."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / str(iteration)
    fsync_tree(written)
    old = None
    if final.exists():
        old = ckpt_dir / f"{PARTIAL_PREFIX}old-{iteration}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(written, final)
    _fsync_dir(ckpt_dir)
    atomic_write_text(ckpt_dir / "latest", f"{iteration}\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
