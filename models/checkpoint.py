"""Checkpoints in the official SAT layout: `model_config.json`, `latest` (the iteration, or `release`),
and `<iteration>/mp_rank_00_model_states.pt` holding `{"module": state_dict}`.

With save format "safetensors" the weights go to `<iteration>/mp_rank_00_model_states.safetensors`
instead (weights only, nothing pickled); loading prefers that file when an iteration has both."""
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

# Buffers a checkpoint may omit: they are recomputed from the configuration.
OPTIONAL_KEYS = ("mixins.rotary.rotary_emb.inv_freq",)
STATE_FILE = "mp_rank_00_model_states.pt"
SAFETENSORS_FILE = "mp_rank_00_model_states.safetensors"
SAVE_FORMATS = ("pt", "safetensors")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the file and the weights."""


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


def load_state_dict(path: Union[str, os.PathLike], iteration=None) -> Dict[str, torch.Tensor]:
    f = state_file(path, iteration)
    if f.suffix == ".safetensors":
        from .safetensors_io import SafetensorsError, load_weights
        try:
            return load_weights(f)
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    try:
        sd = torch.load(f, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or "module" not in sd:
        raise CheckpointError(f"{f}: expected a dict with a 'module' entry holding the state dict")
    return sd["module"]


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
    """A SAT checkpoint directory from a state dict: model_config.json, latest, <iteration>/weights."""
    path = Path(path)
    payload = {"iteration": iteration, **(extra or {})} if save_format == "pt" else extra
    write_weights_file(state, path / str(iteration), save_format, payload)
    (path / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    (path / "latest").write_text(f"{iteration}\n")
    return path
