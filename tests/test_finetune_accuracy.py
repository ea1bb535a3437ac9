"""Accuracy around training: only a missing `inference` package means "accuracy unavailable" (a broken
import inside it is an error), and the accuracy after training is measured in the run's dtype, as before."""
import argparse
import builtins
import sys

import pytest
import torch


def opts(tmp_path):
    tsv = tmp_path / "test.tsv"
    tsv.write_text("index\tquestion\tanswer\n")
    return argparse.Namespace(skip_accuracy=False, eval_data=str(tsv), accuracy_batch_size=1, accuracy_limit=1,
                              accuracy_max_new_tokens=1)


def import_failing(monkeypatch, error):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "inference.evaluate" or (name == "inference" and a and a[2] and "evaluate" in a[2]):
            raise error
        return real(name, *a, **k)
    monkeypatch.delitem(sys.modules, "inference.evaluate", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_a_missing_inference_package_means_unavailable(monkeypatch, tmp_path):
    from finetune import finetune
    said = []
    monkeypatch.setattr(finetune, "log", said.append)
    import_failing(monkeypatch, ModuleNotFoundError("No module named 'inference'", name="inference"))
    assert finetune.held_out_accuracy(None, None, opts(tmp_path), "chat_old", [56, 56]) is None
    assert any("generation accuracy unavailable" in m for m in said)


@pytest.mark.parametrize("error", [ImportError("cannot import name 'judge' from 'inference.judges'"),
                                   ModuleNotFoundError("No module named 'httpx'", name="httpx")])
def test_a_broken_import_inside_inference_is_an_error(monkeypatch, tmp_path, error):
    from finetune.finetune import held_out_accuracy
    import_failing(monkeypatch, error)
    with pytest.raises(type(error)):
        held_out_accuracy(None, None, opts(tmp_path), "chat_old", [56, 56])


@pytest.mark.parametrize("flags", [dict(bf16=True), dict(fp16=True), {}])
def test_accuracy_after_training_loads_in_the_dtype_of_before(sat_dir, flags):
    """The model measured before training is built from the run's args; the one after, from the saved
    checkpoint with accuracy_overrides(args): the same dtype either way (bf16 weights saved or not)."""
    from finetune.finetune import accuracy_overrides
    from models.cogvlm import CogVLMModel
    args = argparse.Namespace(**{"bf16": False, "fp16": False, "device": "cpu", **flags})
    before, margs = CogVLMModel.from_pretrained(str(sat_dir), args=args)
    measured_in = {p.dtype for p in before.parameters()}
    before.to(torch.bfloat16).save_pretrained(sat_dir, iteration=2)  # a run whose saved weights are bf16
    after, _ = CogVLMModel.from_pretrained(str(sat_dir), overrides=accuracy_overrides(margs))
    assert {p.dtype for p in after.parameters()} == measured_in
