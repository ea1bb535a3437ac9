"""SAT <-> Hugging Face layout: exact round trip, the name table against the 17B manifests, direct HF
loading, safetensors checkpoints, and errors that name the tensor or field."""
import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import SAFETENSORS_FILE, STATE_FILE, CheckpointError
from models.cogvlm import CogVLMModel
from models.config import get_preset
from models.convert import (NAME_TABLE, ConversionError, hf_module_name, hf_to_sat, hf_to_sat_names, sat_to_hf,
                            sat_to_hf_names)
from models.hf_config import HFConfigError, sat_config_from_hf
from models.safetensors_io import INDEX_FILE, SafetensorsReader
from models.summary import hf_names, main as summary_main

SPEC = Path(__file__).parent / "data" / "spec"


def _state(path):
    from models.checkpoint import load_state_dict
    return load_state_dict(path)


def test_sat_to_hf_to_sat_is_bit_identical(sat_dir, tmp_path):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", shard_size="300KB", progress=False)
    index = json.loads((hf / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((hf / s).is_file() for s in shards)
    config = json.loads((hf / "config.json").read_text())
    layers = get_preset("cogvlm-tiny").num_layers
    assert config["architectures"] == ["CogVLMForCausalLM"] and config["num_hidden_layers"] == layers
    assert config["vision_config"]["num_positions"] == 65 and config["torch_dtype"] == "float32"
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (hf / f).is_file(), f
    assert json.loads((hf / "special_tokens_map.json").read_text())["bos_token"] == "<s>"

    back = hf_to_sat(hf, tmp_path / "sat2")
    a, b = _state(sat_dir), _state(back)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.loads((back / "model_config.json").read_text()) == json.loads((sat_dir / "model_config.json").read_text())
    assert (back / "tokenizer.model").read_bytes() == (sat_dir / "tokenizer.model").read_bytes()


def test_bf16_export_casts_weights_and_keeps_inv_freq(sat_dir, tmp_path):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", dtype="bf16", progress=False)
    reader = SafetensorsReader(hf)
    assert reader.get("model.layers.0.self_attn.language_expert_query_key_value.weight").dtype == torch.bfloat16
    last = get_preset("cogvlm-tiny").num_layers - 1
    assert reader.get(f"model.layers.{last}.self_attn.rotary_emb.inv_freq").dtype == torch.float32
    assert json.loads((hf / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_from_pretrained_hf_dir_equals_sat_checkpoint(sat_dir, tmp_path, image_batch, tiny_config):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", progress=False)
    sat_model, _ = CogVLMModel.from_pretrained(str(sat_dir))
    hf_model, hf_args = CogVLMModel.from_pretrained(str(hf))
    assert hf_args.tokenizer_type == "tiny" and hf_args.image_length == tiny_config.image_length
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (2, 5)))
    with torch.no_grad():
        assert torch.equal(sat_model.eval()(**inputs)[0], hf_model.eval()(**inputs)[0])
    bf16, _ = CogVLMModel.from_pretrained(str(hf), overrides={"bf16": True})
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_name_table_covers_the_17b_manifests_one_to_one():
    names = hf_names("cogvlm-chat-v1.1")  # the preset built on meta, renamed by the table
    for spec in ("cogvlm-chat-v1.1", "cogvlm-base-224"):
        manifest = json.loads((SPEC / f"{spec}.state_dict.json").read_text())
        plan = sat_to_hf_names(list(manifest), 32)
        if spec == "cogvlm-chat-v1.1":
            assert {hf: list(names[hf]) for hf in names} == {hf: manifest[sat] for hf, sat in plan.items()}
        assert len(plan) == len(manifest) - 1 + 32  # inv_freq: one SAT buffer, one copy per HF layer
        back = hf_to_sat_names(list(plan))
        assert sorted(back) == sorted(manifest)
        assert all(len(v) == (32 if k.endswith("inv_freq") else 1) for k, v in back.items())
    assert manifest[plan["model.vision.patch_embedding.position_embedding.weight"]] == [257, 1792]
    assert names["model.layers.31.self_attn.vision_expert_query_key_value.weight"] == (12288, 4096)
    assert names["model.vision.patch_embedding.cls_embedding"] == (1, 1792)
    assert hf_module_name("mixins.mlp.gate_proj.7") == "model.layers.7.mlp.language_mlp.gate_proj"


def test_name_table_rows_are_unique_both_ways():
    sats, hfs = [s for s, _ in NAME_TABLE], [h for _, h in NAME_TABLE]
    assert len(set(sats)) == len(sats) and len(set(hfs)) == len(hfs)


def test_summary_hf_lists_the_names(capsys):
    summary_main(["--hf", "cogvlm-tiny"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# cogvlm-tiny:") and len(out) == 1 + len(hf_names("cogvlm-tiny"))
    assert "model.vision.boi\t[1, 1, 128]" in out


def _rewrite_hf(hf: Path, edit):
    """Load all HF tensors, apply `edit(dict)`, write them back as one model.safetensors."""
    from safetensors.torch import save_file
    reader = SafetensorsReader(hf)
    tensors = {n: reader.get(n).clone() for n in reader.names()}
    reader.close()
    edit(tensors)
    for f in hf.glob("model-*.safetensors"):
        f.unlink()
    (hf / INDEX_FILE).unlink()
    save_file(tensors, str(hf / "model.safetensors"))


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.update({"model.layers.0.self_attn.extra_proj.weight": torch.zeros(2, 2)}),
     "model.layers.0.self_attn.extra_proj.weight"),
    (lambda t: t.pop("model.vision.eoi"), "1 missing weight(s): model.vision.eoi"),
    (lambda t: t.update({"lm_head.weight": torch.zeros(7, 128)}), "lm_head.weight: checkpoint (7, 128) vs model (1024, 128)"),
    (lambda t: t.update({"model.layers.1.self_attn.rotary_emb.inv_freq":
                         t["model.layers.1.self_attn.rotary_emb.inv_freq"] * 2}), "differs from"),
])
def test_bad_hf_tensors_are_named(sat_dir, tmp_path, edit, message):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", progress=False)
    _rewrite_hf(hf, edit)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CogVLMModel.from_pretrained(str(hf))


def test_unmapped_sat_tensor_is_named(sat_dir, tmp_path):
    from models.convert import write_hf
    state = dict(_state(sat_dir))
    state["mixins.extra.weight"] = torch.zeros(1)
    config = json.loads((sat_dir / "model_config.json").read_text())
    with pytest.raises(CheckpointError, match="mixins.extra.weight"):
        write_hf(state, config, tmp_path / "hf")
    with pytest.raises(ConversionError, match="no entry in the name table.*mixins.extra.weight"):
        sat_to_hf_names(list(state), 4)


def test_bad_hf_config_fields_are_named():
    base = json.loads(json.dumps(_tiny_hf_config()))
    sat_config_from_hf(base)
    for edit, field in ((lambda c: c.pop("hidden_size"), "'hidden_size'"),
                        (lambda c: c["vision_config"].update(num_positions=3), "num_positions 3"),
                        (lambda c: c.update(template_version="poem"), "template_version 'poem'"),
                        (lambda c: c.update(architectures=["LlamaForCausalLM"]), "CogVLMForCausalLM")):
        cfg = json.loads(json.dumps(base))
        edit(cfg)
        with pytest.raises(HFConfigError, match=field):
            sat_config_from_hf(cfg, "x/config.json")


def _tiny_hf_config():
    from models.hf_config import hf_config_from_sat
    return hf_config_from_sat(get_preset("cogvlm-tiny").to_dict(), "float32")


def test_safetensors_save_format_loads_without_pickle(tiny_model, tmp_path, monkeypatch):
    out = tiny_model.save_pretrained(tmp_path / "st", save_format="safetensors")
    assert (out / "1" / SAFETENSORS_FILE).is_file() and not (out / "1" / STATE_FILE).exists()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (pickle) was called"))
    model, _ = CogVLMModel.from_pretrained(str(out))
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_hf_to_sat_safetensors_and_cli(sat_dir, tmp_path, capsys):
    from models.convert import main
    assert main(["--to", "hf", str(sat_dir), str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    assert main(["--to", "sat", str(tmp_path / "hf"), str(tmp_path / "sat"), "--save-format", "safetensors"]) == 0
    assert (tmp_path / "sat" / "1" / SAFETENSORS_FILE).is_file()
    a, b = _state(sat_dir), _state(tmp_path / "sat")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["--to", "sat", str(sat_dir), str(tmp_path / "x")]) == 2
    assert "not a Hugging Face CogVLM directory" in capsys.readouterr().err
