"""Building a model leaves every RNG as it was, and the torch seed before a build decides the model
(SAT's model-only setup used to reseed python, numpy and torch to 1234 on every build)."""
import random

import numpy as np
import torch


def build_tiny():
    from models.cogvlm import CogVLMModel
    from models.config import get_preset
    return CogVLMModel(CogVLMModel.get_args(**get_preset("cogvlm-tiny").to_dict()))


def test_a_build_leaves_every_rng_state_as_it_was():
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    build_tiny()
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert python_state == before[0]
    assert numpy_state[0] == before[1][0] and np.array_equal(numpy_state[1], before[1][1])
    assert numpy_state[2:] == before[1][2:]
    assert torch.equal(torch_state, before[2])
    # what follows the build draws what it would have drawn without it
    assert random.random() == random.Random(11).random()
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(13)))


def test_the_model_seed_decides_the_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return build_tiny().state_dict()

    a, b, a_again = weights(1), weights(2), weights(1)
    assert all(torch.equal(a[k], a_again[k]) for k in a), "the same seed must give the same model"
    random_matrices = [k for k, v in a.items() if v.dim() == 2 and v.is_floating_point()]
    assert random_matrices
    assert all(not torch.equal(a[k], b[k]) for k in random_matrices), "two seeds gave the same weights"


def test_cli_demo_model_seed_gives_different_models():
    import argparse
    from inference.cli_demo import load_model
    args = dict(from_pretrained="cogvlm-tiny", device="cpu", bf16=False, fp16=False, tokenizer=None, template=None)
    m1, _, _ = load_model(argparse.Namespace(model_seed=1, **args))
    m2, _, _ = load_model(argparse.Namespace(model_seed=2, **args))
    m1_again, _, _ = load_model(argparse.Namespace(model_seed=1, **args))
    w1, w2, w1_again = (m.mixins["lm"].lm_head.weight for m in (m1, m2, m1_again))
    assert torch.equal(w1, w1_again) and not torch.equal(w1, w2)
