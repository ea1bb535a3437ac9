"""Checkpoints in the official SAT layout: `model_config.json`, `latest` (the iteration, or `release`),
and `<iteration>/mp_rank_00_model_states.pt` holding `{"module": state_dict}`.

With save format "safetensors" the weights go to `<iteration>/mp_rank_00_model_states.safetensors`
instead (weights only, nothing pickled); loading prefers that file when an iteration has both.

Every .pt file is read with `torch.load(weights_only=True)`: tensors, plain containers and numbers only,
so no code in a checkpoint runs. A file that needs more (an old checkpoint that pickled objects) is
refused with `UntrustedCheckpointError`, naming the file and `--trust-checkpoint`, which allows it."""
import argparse
import json
import os
import pickle
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch

# Buffers a checkpoint may omit: they are recomputed from the configuration.
OPTIONAL_KEYS = ("mixins.rotary.rotary_emb.inv_freq",)
STATE_FILE = "mp_rank_00_model_states.pt"
SAFETENSORS_FILE = "mp_rank_00_model_states.safetensors"
SAVE_FORMATS = ("pt", "safetensors")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the file and the weights."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint file that can only be loaded by running pickled code (refused unless trusted)."""


TRUST_FLAG = "--trust-checkpoint"


def _data_globals() -> list:
    """Data types (not code) that SAT- and DeepSpeed-written files hold beside tensors: numpy arrays (SAT
    saves numpy's RNG state) and argparse.Namespace (run arguments). Rebuilding them calls no user code."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), argparse.Namespace]


def load_file(f: Union[str, os.PathLike], trust: bool = False, mmap: bool = False, map_location="cpu",
              data_globals: Iterable = ()):
    """`torch.load` of one checkpoint file with weights_only=True (plus the data types above and
    `data_globals`: further plain data classes a caller knows the file may hold).

    A file that needs other globals raises UntrustedCheckpointError naming the file and TRUST_FLAG; with
    trust=True it is loaded with full pickle (only for files from a source one trusts). A damaged file
    raises CheckpointError. mmap: memory-map the tensors when the file's format allows it."""
    mmap = mmap and _is_zip(f)
    try:
        with torch.serialization.safe_globals(_data_globals() + list(data_globals)):
            return torch.load(f, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e})") from None
        if not trust:
            detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise UntrustedCheckpointError(
                f"{f}: refused: loading it would run pickled code ({detail}). It is probably an old "
                f"checkpoint that stored Python objects; if you trust where it came from, pass {TRUST_FLAG} "
                f"(then re-save it: new checkpoints hold tensors and plain data only)") from None
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e})") from None
    try:
        return torch.load(f, map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e})") from None


def read_latest(path: Union[str, os.PathLike]) -> str:
    latest = Path(path) / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{latest}: missing; a SAT checkpoint directory names its iteration in 'latest'")
    value = latest.read_text().strip()
    if not value:
        raise CheckpointError(f"{latest}: empty")
    return value


def state_file(path: Union[str, os.PathLike], iteration: Optional[Union[int, str]] = None) -> Path:
    iteration = read_latest(path) if iteration is None else str(iteration)
    f = Path(path) / iteration / STATE_FILE
    if (f.parent / SAFETENSORS_FILE).is_file():
        return f.parent / SAFETENSORS_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (named by {Path(path) / 'latest'})")
    return f


def load_state_dict(path: Union[str, os.PathLike], iteration=None, trust: bool = False) -> Dict[str, torch.Tensor]:
    """The `module` state dict of an iteration (default: latest); trust: see load_file."""
    f = state_file(path, iteration)
    if f.suffix == ".safetensors":
        from .safetensors_io import SafetensorsError, load_weights
        try:
            return load_weights(f)
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    sd = load_file(f, trust=trust, mmap=True)
    if not isinstance(sd, dict) or "module" not in sd:
        raise CheckpointError(f"{f}: expected a dict with a 'module' entry holding the state dict")
    return sd["module"]


def _is_zip(f: Path) -> bool:
    """torch's zip format (the default since 1.6) can be memory-mapped; the legacy format cannot."""
    try:
        with open(f, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError as e:
        raise CheckpointError(f"{f}: cannot be read ({e.strerror})") from None


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(expected: Dict[str, torch.Size], found: Dict[str, torch.Tensor], source: str,
               optional: Iterable[str] = OPTIONAL_KEYS) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped weight."""
    missing = set(expected) - set(found) - set(optional)
    unexpected = set(found) - set(expected)
    mismatched = [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k])}"
                  for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weight(s): {_short_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s): {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(sorted(mismatched)[:12])}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(problems))


def save_checkpoint(model: torch.nn.Module, path: Union[str, os.PathLike], model_config: dict,
                    iteration: Union[int, str] = 1, extra: Optional[dict] = None, save_format: str = "pt") -> Path:
    """Write model_config.json, latest and the <iteration> weights file (weights on CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_checkpoint_files(state, path, model_config, iteration, extra, save_format)


def write_weights_file(state: Dict[str, torch.Tensor], iteration_dir: Union[str, os.PathLike],
                       save_format: str = "pt", extra: Optional[dict] = None) -> Path:
    """The weights of one iteration: `{"module": state, **extra}` pickled by torch (the official .pt), or
    the tensors alone in safetensors (`extra` must then be empty: safetensors holds tensors only)."""
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"save format {save_format!r}: choose from {', '.join(SAVE_FORMATS)}")
    iteration_dir = Path(iteration_dir)
    iteration_dir.mkdir(parents=True, exist_ok=True)
    if save_format == "safetensors":
        if extra:
            raise ValueError(f"safetensors holds tensors only; {', '.join(extra)} would be lost (use the pt format)")
        from .safetensors_io import save_weights
        return save_weights(state, iteration_dir / SAFETENSORS_FILE)
    (iteration_dir / SAFETENSORS_FILE).unlink(missing_ok=True)  # else an older one would shadow the new weights
    torch.save({"module": state, **(extra or {})}, iteration_dir / STATE_FILE)
    return iteration_dir / STATE_FILE


def write_checkpoint_files(state: Dict[str, torch.Tensor], path: Union[str, os.PathLike], model_config: dict,
                           iteration: Union[int, str] = 1, extra: Optional[dict] = None,
                           save_format: str = "pt") -> Path:
    """A SAT checkpoint directory from a state dict: model_config.json, latest, <iteration>/weights; the
    iteration is written beside its place and renamed when complete, `latest` replaced after."""
    from .atomic_files import atomic_write_text, partial_dir, publish_iteration
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    payload = {"iteration": iteration, **(extra or {})} if save_format == "pt" else extra
    written = partial_dir(path, iteration)  # renamed to <iteration> once complete, then latest (crash-safe)
    write_weights_file(state, written, save_format, payload)
    atomic_write_text(path / "model_config.json", json.dumps(model_config, indent=2) + "\n")
    publish_iteration(path, iteration, written)
    return path
