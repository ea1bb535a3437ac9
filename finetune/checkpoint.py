"""Training checkpoints: the official SAT layout plus what an exact resume needs.

    <dir>/model_config.json                  the model (official keys; a LoRA run adds "lora")
    <dir>/tokenizer.model                    so the checkpoint is self-contained
    <dir>/latest                             the newest iteration
    <dir>/<iter>/mp_rank_00_model_states.pt  {"module": state dict, "cogcot": trainer state, DeepSpeed's
                                             engine state (and, without ZeRO, the optimizer state)}
    <dir>/<iter>/zero_pp_rank_*_optim_states.pt   ZeRO optimizer partitions, one per data-parallel rank
    <dir>/<iter>/zero_pp_rank_*_model_states.pt   ZeRO-3 only: DeepSpeed's weight partitions (the .pt above
                                             then holds the gathered full weights)
    <dir>/<iter>/rng_state_rank<r>.pt        each process's RNG states (dropout continues exactly)

Written with DeepSpeed's public `save_checkpoint`/`load_checkpoint` (all ranks take part), so
`CogVLMModel.from_pretrained(<dir>)` loads it as it loads an official checkpoint. Everything is read with
`torch.load(weights_only=True)` (models.checkpoint.load_file), DeepSpeed's own reads included: what a
resume needs beyond tensors (RNG states, samples consumed, run settings) is stored as tensors and plain
numbers/strings, so no code in a checkpoint runs; `trust=True` (--trust-checkpoint) allows an old one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from models.atomic_files import PARTIAL_PREFIX, atomic_write_text
from models.checkpoint import STATE_FILE, load_file, read_latest

TRAINER_STATE_KEY = "cogcot"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def rng_state() -> dict:
    """This process's RNG states as tensors and plain numbers (a weights-only load reads them back)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved (also the tuple/ndarray form earlier versions pickled)."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"])
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def deepspeed_data_globals() -> list:
    """The plain data classes DeepSpeed pickles into its optimizer files (loss scaler settings, the ZeRO
    stage, fragment addresses); rebuilding them sets attributes only, no code of theirs runs."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine with every read going through load_file (weights_only) instead of
    its `torch.load(weights_only=False)`; everything else is the wrapped engine's."""

    def __init__(self, inner, trust: bool):
        self._inner, self._trust = inner, trust

    def load(self, path, map_location=None):
        return load_file(path, trust=self._trust, map_location=map_location or "cpu",
                         data_globals=deepspeed_data_globals())

    def __getattr__(self, name):
        return getattr(self._inner, name)


def write_model_files(model, ckpt_dir, tokenizer_file: Optional[str], lora_config=None) -> None:
    """model_config.json (+ "lora" for a LoRA run) and tokenizer.model; rank 0 only."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    config = model.model_config()
    if lora_config is not None:
        config["lora"] = lora_config.to_dict()
    atomic_write_text(ckpt_dir / "model_config.json", json.dumps(config, indent=2) + "\n")
    target = ckpt_dir / "tokenizer.model"
    if tokenizer_file and Path(tokenizer_file).resolve() != target.resolve():
        tmp = target.with_name(f".tokenizer.model.tmp-{os.getpid()}")
        shutil.copyfile(tokenizer_file, tmp)
        os.replace(tmp, target)


def write_weights(model_or_state, iteration_dir, save_format: str) -> Path:
    """The weights of one saved iteration in `save_format` (models.checkpoint.write_weights_file)."""
    from models.checkpoint import write_weights_file
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return write_weights_file({k: v.detach().cpu() for k, v in state.items()}, iteration_dir, save_format)


def _full_state_dict_zero3(engine) -> Optional[dict]:
    """Under ZeRO-3 the engine's module holds partitions: gather the full weights (rank 0 keeps them)."""
    import deepspeed
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if _rank() == 0:
            return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    return None


TEST_PAUSE_IN_SAVE = "COGCOT_TEST_PAUSE_IN_SAVE"  # test-only hook, see _pause_in_save


def _pause_in_save(iteration: int, written: Path) -> None:
    """Test-only: with COGCOT_TEST_PAUSE_IN_SAVE=<iteration> the save of that iteration stops, its files
    written but not yet published, says so on stdout and waits (a test kills the run there)."""
    if os.environ.get(TEST_PAUSE_IN_SAVE) == str(iteration) and _rank() == 0:
        print(f"[test-hook] inside the save of iteration {iteration} ({written})", flush=True)
        time.sleep(3600)


def save_training_checkpoint(engine, ckpt_dir, iteration: int, trainer_state: dict,
                             tokenizer_file: Optional[str] = None, lora_config=None, save_format: str = "pt") -> Path:
    """Write iteration `iteration` into `ckpt_dir` (all ranks call this); save_format "safetensors" adds
    the weights as a safetensors file beside DeepSpeed's .pt (which stays: it holds the resume state).

    Crash-safe: every file (DeepSpeed's, the RNG states, ...) goes to `<ckpt_dir>/.partial-<iteration>`;
    once all ranks are done, rank 0 syncs it, renames it to `<iteration>` and then replaces `latest`."""
    from models.atomic_files import partial_dir, publish_iteration
    ckpt_dir = Path(ckpt_dir)
    written = ckpt_dir / f"{PARTIAL_PREFIX}{iteration}"
    if _rank() == 0:
        partial_dir(ckpt_dir, iteration)  # a crashed save's leftovers go
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=written.name, client_state={TRAINER_STATE_KEY: trainer_state},
                           save_latest=False)
    full = None
    if engine.zero_optimization_partition_weights():
        full = _full_state_dict_zero3(engine)
        if _rank() == 0:  # DeepSpeed wrote zero_pp_rank_*_model_states.pt (partitions): add the official file
            torch.save({"module": full, "iteration": iteration, TRAINER_STATE_KEY: trainer_state},
                       written / STATE_FILE)
    if save_format != "pt" and _rank() == 0:
        write_weights(engine.module if full is None else full, written, save_format)
    torch.save(rng_state(), written / f"rng_state_rank{_rank():03d}.pt")
    barrier()  # every rank's files are complete
    if _rank() == 0:
        write_model_files(engine.module, ckpt_dir, tokenizer_file, lora_config)
        _pause_in_save(iteration, written)
        publish_iteration(ckpt_dir, iteration, written)
    barrier()
    return ckpt_dir / str(iteration)


def iteration_problems(ckpt_dir, iteration) -> List[str]:
    """What makes a saved iteration unreadable, one line per file ([] when intact). Cheap: a torch zip
    file is checked through its directory (a cut-off file has none), a legacy one is loaded."""
    d = Path(ckpt_dir) / str(iteration)
    if not d.is_dir():
        return [f"{d}: missing"]
    problems = [] if (d / STATE_FILE).is_file() else [f"{d / STATE_FILE}: missing"]
    for f in sorted(d.glob("*.pt")):
        try:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    z.getinfo(next(n for n in z.namelist() if n.endswith("data.pkl")))
            else:
                load_file(f, trust=True, data_globals=deepspeed_data_globals())
        except Exception as e:  # BadZipFile, StopIteration (no pickle inside), CheckpointError
            problems.append(f"{f}: cannot be read ({type(e).__name__}: {e})")
    return problems


def newest_intact_iteration(ckpt_dir, log=print) -> int:
    """The iteration a resume starts from: the one `latest` names, or, if that cannot be read, the newest
    older one that can (each unreadable file is reported through `log`). Raises CheckpointError if none."""
    from models.checkpoint import CheckpointError
    ckpt_dir = Path(ckpt_dir)
    named = int(read_latest(ckpt_dir))
    older = sorted((int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) < named),
                   reverse=True)
    for iteration in [named, *older]:
        problems = iteration_problems(ckpt_dir, iteration)
        if not problems:
            if iteration != named:
                log(f"[resume] falling back to iteration {iteration}, the newest intact checkpoint in {ckpt_dir}")
            return iteration
        log(f"[resume] iteration {iteration} cannot be used:\n  " + "\n  ".join(problems))
    raise CheckpointError(f"{ckpt_dir}: no intact iteration to resume from (see the problems above)")


def read_trainer_state(ckpt_dir, iteration=None, trust: bool = False) -> dict:
    """The trainer state saved with an iteration (default: latest); {} for a checkpoint made elsewhere."""
    tag = read_latest(ckpt_dir) if iteration is None else str(iteration)
    f = Path(ckpt_dir) / tag / STATE_FILE
    payload = load_file(f, trust=trust, mmap=True, data_globals=deepspeed_data_globals())
    return dict(payload.get(TRAINER_STATE_KEY) or {})


def restore_training_state(engine, ckpt_dir, iteration: int, trust: bool = False) -> None:
    """Optimizer (and ZeRO) state and weights through DeepSpeed (its reads weights-only), then this rank's
    RNG states."""
    plain = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyLoads(plain, trust)
    try:
        load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=str(iteration), load_optimizer_states=True,
                                              load_lr_scheduler_states=False, load_module_strict=True)
    finally:
        engine.checkpoint_engine = plain
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}/{iteration}")
    rng_file = Path(ckpt_dir) / str(iteration) / f"rng_state_rank{_rank():03d}.pt"
    if rng_file.is_file():
        set_rng_state(load_file(rng_file, trust=trust))
    elif _rank() == 0:
        print(f"[resume] {rng_file} missing (different number of processes?): RNG streams start afresh")


def load_training_checkpoint(path, base_args=None, dtype: Optional[torch.dtype] = None, iteration=None,
                             trust: bool = False):
    """(model with its LoRA adapters, if the run had any, model args, LoRA config or None, iteration)
    from a checkpoint this trainer saved. Every weight is checked by name and shape before loading.

    base_args: run-time settings (dtype flags, device, ...) to carry into the model args; dtype: the
    parameters' dtype (default: that of the saved weights); iteration: default the latest; trust: allow
    files that only load with full pickle (models.checkpoint.load_file).
    """
    from models.checkpoint import check_keys, load_state_dict
    from models.cogvlm import CogVLMModel, build_model_args
    from models.config import load_model_config
    from .lora import LoRAConfig, add_lora
    config = load_model_config(str(path))
    lora = LoRAConfig.from_dict(config.pop("lora")) if "lora" in config else None
    iteration = int(read_latest(path)) if iteration is None else int(iteration)
    state = load_state_dict(path, iteration, trust=trust)
    if dtype is None:
        dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    margs = build_model_args(config, base_args)
    margs.skip_init = True
    model = CogVLMModel(margs, params_dtype=dtype)
    if lora is not None:
        add_lora(model, lora)
    check_keys({k: v.shape for k, v in model.state_dict().items()}, state, f"{path}/{iteration}")
    model.load_state_dict(state, strict=False)
    return model.to(dtype), margs, lora, iteration
