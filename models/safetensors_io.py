"""Safetensors files on disk: sharded writing with a `model.safetensors.index.json` (the Hugging Face
layout), and lazy reading of a single file or a sharded set.

Reading is lazy: `SafetensorsReader.get(name)` returns a tensor backed by the file's memory map
(copy-on-write), so a model loaded with `load_state_dict(assign=True)` holds one copy of its weights
in host memory, never two. Nothing here unpickles anything.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be used; the message names the file and the tensor."""


def parse_size(text: Union[str, int]) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, 1000 -> 1000 (bytes)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"shard size {text!r}: expected a number with an optional unit (B, KB, MB, GB, MiB, GiB)")
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    if size < 1:
        raise ValueError(f"shard size {text!r} must be at least one byte")
    return size


def nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def plan_shards(sizes: Mapping[str, int], shard_size: int) -> List[List[str]]:
    """Group tensor names, in order, into shards of at most `shard_size` bytes (a larger tensor gets its own)."""
    shards: List[List[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards if shards[0] else []


def write_sharded(names_sizes: Mapping[str, int], get: Callable[[str], torch.Tensor], out_dir: Union[str, Path],
                  shard_size: int, metadata: Optional[Dict[str, str]] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write `model-0000i-of-0000n.safetensors` files and the index; tensors are fetched one shard at a
    time through `get(name)`, so only one shard is ever in memory. Returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(names_sizes, shard_size)
    weight_map: Dict[str, str] = {}
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors, seen = {}, set()
        for n in names:
            t = get(n).contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[n] = t.clone() if ptr in seen else t  # one buffer written under several names
            seen.add(ptr)
        save_file(tensors, str(out_dir / file), metadata={"format": "pt", **(metadata or {})})
        weight_map.update({n: file for n in names})
        del tensors
        if progress:
            progress(i, len(shards))
    for stale in out_dir.glob("model-*-of-*.safetensors"):  # shards of an earlier, differently split write
        if stale.name not in set(weight_map.values()):
            stale.unlink()
    index = {"metadata": {"total_size": sum(names_sizes.values())}, "weight_map": weight_map}
    path = out_dir / INDEX_FILE
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


class SafetensorsReader:
    """The tensors of one safetensors file or of a sharded set (through its index), read on demand."""

    def __init__(self, directory: Union[str, Path]):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SafetensorsError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
            self.files = {name: self.directory / file for name, file in weight_map.items()}
        elif (self.directory / SINGLE_FILE).is_file():
            self.files = {name: self.directory / SINGLE_FILE for name in self._open(self.directory / SINGLE_FILE).keys()}
        else:
            raise SafetensorsError(f"{self.directory}: neither {INDEX_FILE} nor {SINGLE_FILE}")
        missing = sorted({str(f) for f in self.files.values() if not f.is_file()})
        if missing:
            raise SafetensorsError(f"{index}: names shard file(s) that are missing: {', '.join(missing)}")
        self._handles: Dict[Path, object] = {}

    def _open(self, file: Path):
        try:
            return safe_open(str(file), framework="pt")
        except Exception as e:  # the Rust reader raises its own error types for a damaged header
            raise SafetensorsError(f"{file}: cannot be read ({type(e).__name__}: {e})") from None

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = self._open(file)
        return self._handles[file]

    def names(self) -> List[str]:
        return list(self.files)

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        file = self.files[name]
        try:
            return self._handle(file).get_tensor(name)
        except Exception as e:
            raise SafetensorsError(f"{file}: tensor {name!r} cannot be read ({type(e).__name__}: {e})") from None

    def metadata(self) -> Dict[str, str]:
        first = next(iter(self.files.values()), None)
        return dict(self._handle(first).metadata() or {}) if first else {}

    def close(self) -> None:
        """Drop the file handles (tensors already returned stay valid)."""
        self._handles.clear()


def save_weights(state: Mapping[str, torch.Tensor], file: Union[str, Path], metadata: Optional[dict] = None) -> Path:
    """One safetensors file of `state` on CPU (safetensors refuses tensors that share storage: those are copied)."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    owners = Counter(v.untyped_storage().data_ptr() for v in cpu.values())
    tensors = {k: v.clone() if owners[v.untyped_storage().data_ptr()] > 1 else v for k, v in cpu.items()}
    save_file(tensors, str(file), metadata={"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}})
    return file


def load_weights(file: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """All tensors of one safetensors file, memory-mapped (no copy until written to)."""
    file = Path(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise SafetensorsError(f"{file}: cannot be read ({type(e).__name__}: {e})") from None

