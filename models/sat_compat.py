"""SwissArmyTransformer 0.4.12 on a machine without CUDA: the few places where SAT's training path
assumes a GPU, worked around. Nothing here runs when CUDA is available.

Use `get_args(args_list, parser)` instead of `sat.get_args`, and call `apply()` before SAT's
`training_main`. Each line below names what it works around.
"""
from __future__ import annotations

import os
import socket
import warnings
from typing import List, Optional, Sequence

import torch

_applied = False


def needed() -> bool:
    return not torch.cuda.is_available()


def _no_synchronize(device=None) -> None:
    """Nothing to wait for: CPU kernels run synchronously."""


def apply() -> None:
    """Process-wide CPU shims for SAT's training loop (idempotent; a no-op with CUDA)."""
    global _applied
    if _applied or not needed():
        return
    # sat.training.utils.Timers.start/stop call torch.cuda.synchronize(), which asserts on CPU-only torch.
    torch.cuda.synchronize = _no_synchronize
    # DeepSpeed's CPU comm backend JIT-compiles a shared-memory all-reduce kernel at init (1-2 min the first
    # time on a small machine); it only serves inference_all_reduce, training all-reduces go through gloo.
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # SAT's make_data_loader always asks for pinned memory; torch warns about it at every loader on CPU.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    _applied = True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "gloo") -> None:
    """Start the gloo process group the way the DeepSpeed launcher describes it in the environment.

    sat.get_args -> initialize_distributed would call torch.cuda.set_device; it skips that (and its
    own init) when the process group already exists. A bare `python finetune.py` gets a world of one.
    """
    import deepspeed
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def get_args(args_list: Optional[Sequence[str]] = None, parser=None):
    """`sat.get_args`, also on CPU.

    On CPU, sat.get_args raises in training mode because args.device ('cpu') differs from the local
    rank (0); passing the local rank as --device satisfies that check, and the device is set back to
    'cpu' afterwards. The backend is gloo (nccl needs GPUs).
    """
    from sat import get_args as sat_get_args
    args_list = list(args_list or [])
    if not needed():
        return sat_get_args(args_list, parser)
    init_distributed("gloo")
    local_rank = os.environ.get("LOCAL_RANK", "0")
    extra: List[str] = ["--device", local_rank, "--distributed-backend", "gloo"]
    args = sat_get_args(args_list + extra, parser)
    args.device = "cpu"  # the consistency check is done; everything lives on the CPU
    return args
