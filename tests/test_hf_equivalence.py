"""Opt-in: our model against the Hugging Face CogVLM modelling code itself, through `transformers`.

    COGVLM_HF_CODE=/path/to/cogvlm-chat-hf python -m pytest tests/test_hf_equivalence.py -q

COGVLM_HF_CODE is a directory holding the remote-code files of a `cogvlm-*-hf` repository
(configuration_cogvlm.py, modeling_cogvlm.py, visual.py, and util.py where the revision has one).
They are copied beside the converted tiny model, which is then loaded with
`AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` in fp32; logits must agree with
ours to 1e-4, for image + text and text only. The LoRA test loads our PEFT export with `peft`.
Needs a transformers release that still runs that code (4.3x-4.4x) and peft; see the README.
"""
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HF_CODE = os.environ.get("COGVLM_HF_CODE")
pytestmark = pytest.mark.skipif(not HF_CODE, reason="set COGVLM_HF_CODE to the HF modelling code to run")
TOLERANCE = 1e-4


def _xformers_shim():
    """The HF ViT calls xformers' memory_efficient_attention, a CUDA kernel; where xformers is not
    installed, this test (only) provides it through PyTorch's SDPA, same maths: q, k, v [B, L, H, D]."""
    try:
        import xformers.ops  # noqa: F401
        return
    except ImportError:
        pass

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_bias, dropout_p=p, scale=scale)
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    sys.modules.setdefault("xformers", package)
    sys.modules.setdefault("xformers.ops", ops)


def load_hf_model(hf_dir: Path):
    """The HF CogVLMForCausalLM of `hf_dir` (the code files of COGVLM_HF_CODE copied in), fp32, eval."""
    transformers = pytest.importorskip("transformers")
    code = Path(HF_CODE)
    files = sorted(code.glob("*.py"))
    if not (code / "modeling_cogvlm.py").is_file():
        pytest.fail(f"COGVLM_HF_CODE={code}: no modeling_cogvlm.py there")
    for f in files:
        shutil.copyfile(f, hf_dir / f.name)
    _xformers_shim()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True,
                                                              torch_dtype=torch.float32)
    return model.eval()


def hf_image_inputs(ours: dict):
    """HF inputs for our `[BOS][BOI][IMG]xL[EOI] text` rows: token types mark BOI..EOI as vision."""
    ids = ours["input_ids"]
    token_type_ids = ours["image_embed_mask"].long()  # 1 on BOI, the L image tokens and EOI
    images = [[img] for img in ours["vision_image"]]
    return dict(input_ids=ids, token_type_ids=token_type_ids, attention_mask=torch.ones_like(ids), images=images)


@pytest.fixture
def converted(tmp_path, tiny_model):
    from models.convert import sat_to_hf
    sat = tiny_model.save_pretrained(tmp_path / "sat")
    return sat_to_hf(sat, tmp_path / "hf", progress=False)


def test_logits_equal_the_hf_code_image_and_text(converted, tiny_model, image_batch, tiny_config):
    hf = load_hf_model(converted)
    text = torch.randint(3, tiny_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    ours_in = image_batch(text, seed=1)
    with torch.no_grad():
        ours = tiny_model(**ours_in)[0]
        theirs = hf(**hf_image_inputs(ours_in)).logits
    diff = (ours - theirs).abs().max().item()
    print(f"\n[hf-equivalence] image + text: max |logit diff| = {diff:.3e} over {tuple(ours.shape)}")
    assert diff < TOLERANCE


def test_logits_equal_the_hf_code_text_only(converted, tiny_model, tiny_config):
    hf = load_hf_model(converted)
    ids = torch.cat([torch.ones(2, 1, dtype=torch.long),
                     torch.randint(3, tiny_config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))], 1)
    n = ids.shape[1]
    with torch.no_grad():
        ours = tiny_model(input_ids=ids, position_ids=torch.arange(n)[None].repeat(2, 1), attention_mask=None,
                          vision_expert_mask=torch.zeros_like(ids))[0]
        theirs = hf(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids)).logits
    diff = (ours - theirs).abs().max().item()
    print(f"\n[hf-equivalence] text only: max |logit diff| = {diff:.3e} over {tuple(ours.shape)}")
    assert diff < TOLERANCE


def test_peft_adapter_equals_our_merged_model(lora_checkpoint, tmp_path, image_batch, tiny_config):
    peft = pytest.importorskip("peft")
    from finetune.lora import merge_lora
    from finetune.merge_lora import main as merge_main
    ckpt, model = lora_checkpoint
    out = tmp_path / "peft"
    assert merge_main([str(ckpt), "--export-peft", str(out)]) == 0
    hf = peft.PeftModel.from_pretrained(load_hf_model(out), str(out)).eval()
    with torch.no_grad():
        merge_lora(model)
    ours_in = image_batch(torch.randint(3, tiny_config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        ours = model.eval()(**ours_in)[0]
        theirs = hf(**hf_image_inputs(ours_in)).logits
        base = hf.get_base_model()
        with hf.disable_adapter():
            without = base(**hf_image_inputs(ours_in)).logits
    diff = (ours - theirs).abs().max().item()
    print(f"\n[hf-equivalence] PEFT LoRA vs our merged model: max |logit diff| = {diff:.3e}; "
          f"adapters change the logits by up to {(ours - without).abs().max().item():.3e}")
    assert (ours - without).abs().max().item() > 1e-2  # the adapters matter, so equality means something
    assert diff < TOLERANCE
