"""LoRA adapters exported for PEFT: every adapter on its HF module, and base + adapters = our merged model."""
import json
import re

import pytest
import torch

from finetune.merge_lora import main as merge_main
from finetune.peft_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, peft_adapter_state
from models.convert import ConversionError, hf_name
from models.safetensors_io import SafetensorsReader, load_weights


def test_export_peft_writes_adapters_on_the_hf_modules(lora_checkpoint, tmp_path):
    ckpt, model = lora_checkpoint
    out = tmp_path / "peft"
    assert merge_main([str(ckpt), "--export-peft", str(out)]) == 0
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    adapters = load_weights(out / ADAPTER_WEIGHTS)
    base = SafetensorsReader(out)
    hf_modules = {n[: -len(".weight")] for n in base.names() if n.endswith(".weight")}
    adapted = {k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in adapters}
    assert len(adapted) == len(model.mixins["lora"].adapters) and adapted <= hf_modules
    # target_modules selects exactly the adapted modules among all HF modules (PEFT full-matches it)
    assert {m for m in hf_modules if re.fullmatch(config["target_modules"], m)} == adapted
    assert "model.layers.0.self_attn.language_expert_query_key_value" in adapted
    assert "model.vision.transformer.layers.1.mlp.fc2" in adapted

    # HF base + scale * B A, module by module, equals our merged model renamed to HF names
    from finetune.lora import merge_lora
    scale = config["lora_alpha"] / config["r"]
    with torch.no_grad():
        merge_lora(model)
    merged = model.state_dict()
    for module in adapted:
        a = adapters[f"{PEFT_PREFIX}{module}.lora_A.weight"]
        b = adapters[f"{PEFT_PREFIX}{module}.lora_B.weight"]
        w = base.get(f"{module}.weight") + scale * (b @ a)
        sat = next(k for k in merged if k.endswith(".weight") and hf_name(k) == f"{module}.weight")
        torch.testing.assert_close(w, merged[sat], rtol=0, atol=1e-6)
    assert (out / "config.json").is_file() and (out / "tokenizer.model").is_file()


def test_adapter_without_hf_module_is_named(lora_checkpoint):
    _, model = lora_checkpoint
    mixin = model.mixins["lora"]
    mixin.adapters["mixins__extra__proj"] = next(iter(mixin.adapters.values()))
    with pytest.raises(ConversionError, match="mixins.extra.proj"):
        peft_adapter_state(model)
