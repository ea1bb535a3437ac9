"""Build SAT's `BaseTransformer` on the current default device, so a model can be built on `meta`.

SAT's `BaseModel` always passes `device='cpu'` (or a CUDA device) to its layers, which would allocate
all 17B parameters even under `with torch.device("meta")`; building the transformer here avoids that.
SAT's model-only setup (`_simple_init`) would also reseed every RNG to 1234; here it seeds nothing, and
`rng_preserved` gives a build back the RNG states it found (the weights come from the torch RNG as it
stood, so `torch.manual_seed(s)` before a build decides the model).
"""
import random
from contextlib import contextmanager

import numpy as np
import torch
from sat.arguments import _simple_init
from sat.model.transformer import BaseTransformer
from sat.transformer_defaults import ARGS_DEFAULT


def default_device(args) -> torch.device:
    current = torch.get_default_device()
    if current.type == "meta":
        return current
    if getattr(args, "use_gpu_initialization", False) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def rng_preserved():
    """Restore the python, numpy, torch and CUDA RNG states on exit: building a model must not shift the
    random streams that follow (data order, dropout, sampling)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def build_transformer(args, params_dtype=torch.float, **kwargs) -> BaseTransformer:
    """The transformer `BaseModel.__init__` would build, on `default_device(args)`; no RNG is reseeded."""
    # seed=None: SAT's set_random_seed does nothing (with a seed it reseeds python, numpy, torch and CUDA).
    _simple_init(model_parallel_size=args.model_parallel_size, seed=None)
    options = {k: getattr(args, name, default) for k, (name, default) in ARGS_DEFAULT.items()}
    options.update(kwargs)
    return BaseTransformer(
        num_layers=args.num_layers, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, max_sequence_length=args.max_sequence_length,
        layernorm_order=args.layernorm_order, hooks={}, params_dtype=params_dtype,
        skip_init=getattr(args, "skip_init", False), device=default_device(args), **options,
    )
