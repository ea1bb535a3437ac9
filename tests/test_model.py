"""CogVLMModel: official state-dict layout, expert routing, KV cache, checkpoint I/O, clear load errors."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointError, STATE_FILE
from models.cogvlm import CogVLMModel
from models.config import get_preset
from models.kv_cache import KVCache, SharedPrefixKVCache

SPEC = Path(__file__).parent / "data" / "spec"


@pytest.mark.parametrize("preset,spec,count", [
    ("cogvlm-chat-v1.1", "cogvlm-chat-v1.1", 17_639_685_440),
    ("cogvlm-base-490", "cogvlm-chat-v1.1", 17_639_685_440),
    ("cogvlm-base-224", "cogvlm-base-224", 17_637_948_992),
])
def test_official_presets_match_spec_manifest(preset, spec, count):
    with torch.device("meta"):
        model = CogVLMModel(CogVLMModel.get_args(**get_preset(preset).to_dict()))
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = json.loads((SPEC / f"{spec}.state_dict.json").read_text())
    assert sorted(set(state) ^ set(expected)) == []
    assert {k: v for k, v in state.items() if expected[k] != v} == {}
    assert sum(v.numel() for v in model.state_dict().values()) == count


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _plain_llama(sd, cfg, ids, pos):
    """An independent LLaMA forward from the language weights only (no SAT, no mixins)."""
    h = sd["transformer.word_embeddings.weight"][ids]
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    ang = pos[..., None].float() * inv
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(x):
        a, b = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    n = ids.shape[1]
    causal = torch.ones(n, n).tril().bool()
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        x = _rms(h, sd[p + "input_layernorm.weight"])
        q, k, v = (x @ sd[p + "attention.query_key_value.weight"].T).chunk(3, -1)
        q, k, v = (t.view(*t.shape[:2], heads, d).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + (att @ v).transpose(1, 2).reshape(h.shape) @ sd[p + "attention.dense.weight"].T
        x = _rms(h, sd[p + "post_attention_layernorm.weight"])
        gate = F.silu(x @ sd[f"mixins.mlp.gate_proj.{i}.weight"].T)
        h = h + (gate * (x @ sd[p + "mlp.dense_h_to_4h.weight"].T)) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    return _rms(h, sd["transformer.final_layernorm.weight"]) @ sd["mixins.lm.lm_head.weight"].T


def test_text_only_equals_plain_llama(tiny_model, tiny_config):
    ids = torch.randint(3, tiny_config.vocab_size, (2, 12))
    pos = torch.arange(12)[None].repeat(2, 1)
    with torch.no_grad():
        ours = tiny_model(input_ids=ids, position_ids=pos, attention_mask=torch.ones(1, 1, 12, 12).tril(),
                          vision_expert_mask=torch.zeros(2, 12, dtype=torch.long))[0]
        ref = _plain_llama(tiny_model.state_dict(), tiny_config, ids, pos)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def _expert_params(model):
    return [p for name in ("mlp", "rotary") for n, p in model.mixins[name].named_parameters()
            if n.startswith("vision_")]


def test_vision_expert_weights_only_affect_image_conditioned_outputs(tiny_model, tiny_config, image_batch):
    text = torch.randint(3, tiny_config.vocab_size, (1, 6))
    image_inputs = image_batch(text)
    text_inputs = dict(input_ids=text, position_ids=torch.arange(6)[None],
                       attention_mask=torch.ones(1, 1, 6, 6).tril())
    with torch.no_grad():
        before_img = tiny_model(**image_inputs)[0]
        before_txt = tiny_model(**text_inputs)[0]
        for p in _expert_params(tiny_model):
            p.add_(torch.randn_like(p) * 0.05)
        after_img = tiny_model(**image_inputs)[0]
        after_txt = tiny_model(**text_inputs)[0]
    assert torch.equal(before_txt, after_txt)
    L = tiny_config.image_length
    # BOS precedes the image: unchanged. Everything from BOI on sees expert outputs: changed.
    assert torch.equal(before_img[:, 0], after_img[:, 0])
    assert (before_img[:, L + 3:] - after_img[:, L + 3:]).abs().max() > 1e-4


def test_expert_mask_routes_tokens(tiny_model, tiny_config, image_batch):
    """The same inputs with the expert mask cleared must differ only because routing changed."""
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (1, 5)))
    with torch.no_grad():
        routed = tiny_model(**inputs)[0]
        unrouted = tiny_model(**dict(inputs, vision_expert_mask=torch.zeros_like(inputs["vision_expert_mask"])))[0]
        for p in _expert_params(tiny_model):
            p.zero_()
        unrouted_again = tiny_model(**dict(inputs, vision_expert_mask=torch.zeros_like(inputs["vision_expert_mask"])))[0]
    assert (routed - unrouted).abs().max() > 1e-4
    assert torch.equal(unrouted, unrouted_again)


def _incremental(model, inputs, cut):
    """Prompt up to `cut` in one step (with the image), then one token per step through a KVCache."""
    cache = KVCache()
    prompt = {k: (v[:, :cut] if k in ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask") else v)
              for k, v in inputs.items()}
    prompt["attention_mask"] = None
    outs = [model(**prompt, kv_cache=cache)[0]]
    for i in range(cut, inputs["input_ids"].shape[1]):
        outs.append(model(input_ids=inputs["input_ids"][:, i:i + 1], position_ids=inputs["position_ids"][:, i:i + 1],
                          kv_cache=cache)[0])
    return torch.cat(outs, dim=1), cache


def test_kv_cache_decoding_equals_full_forward(tiny_model, tiny_config, image_batch):
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (2, 8)))
    with torch.no_grad():
        full = tiny_model(**inputs)[0]
        inc, cache = _incremental(tiny_model, inputs, cut=tiny_config.image_length + 5)
    assert cache.seq_len == inputs["input_ids"].shape[1]
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


def test_multi_token_step_after_cache_is_causal(tiny_model, tiny_config, image_batch):
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (1, 8)))
    n, cut = inputs["input_ids"].shape[1], tiny_config.image_length + 4
    with torch.no_grad():
        full = tiny_model(**inputs)[0]
        cache = KVCache()
        head = {k: (v[:, :cut] if k in ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask") else v)
                for k, v in inputs.items()}
        tiny_model(**dict(head, attention_mask=None), kv_cache=cache)
        tail = tiny_model(input_ids=inputs["input_ids"][:, cut:], position_ids=inputs["position_ids"][:, cut:],
                          kv_cache=cache)[0]
    assert torch.allclose(tail, full[:, cut:], atol=1e-5)


def test_shared_prefix_cache_equals_independent_rows(tiny_model, tiny_config, image_batch):
    """N candidates decoded over one batch-1 prefix equal N separate dense-cache runs."""
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (1, 4)))
    n = inputs["input_ids"].shape[1]
    cont = torch.randint(3, tiny_config.vocab_size, (3, 5))  # 3 rows, 5 steps each
    with torch.no_grad():
        prefix = KVCache()
        tiny_model(**dict(inputs, attention_mask=None), kv_cache=prefix)
        shared = SharedPrefixKVCache(prefix, num_rows=3)
        steps = [tiny_model(input_ids=cont[:, t:t + 1], position_ids=torch.full((3, 1), n - 1 + 1 + t),
                            kv_cache=shared)[0] for t in range(5)]
        fast = torch.cat(steps, 1)
        for row in range(3):
            dense = prefix.clone()
            ref = torch.cat([tiny_model(input_ids=cont[row:row + 1, t:t + 1], position_ids=torch.full((1, 1), n + t),
                                        kv_cache=dense)[0] for t in range(5)], 1)
            assert torch.allclose(fast[row:row + 1], ref, atol=1e-5)
        committed = shared.commit(1, length=5)
    assert committed.seq_len == n + 5 and prefix.seq_len == n
    assert shared.suffix.nbytes() < 3 * prefix.nbytes()  # rows hold their own tokens only


def test_random_init_is_scaled_to_the_width(tiny_model):
    """Random matrices get std 1/sqrt(fan_in), residual-branch outputs 1/sqrt(2 * layers) less, so the
    width-128 preset starts with attention that is not flat (SAT's fixed 0.02 made it so)."""
    layers = len(tiny_model.transformer.layers)
    vit_layers = len(tiny_model.mixins["eva"].vit_model.transformer.layers)
    checked = 0
    for name, p in tiny_model.named_parameters():
        if p.dim() != 2 or "embeddings" in name or p.numel() < 4096:
            continue
        expect = p.shape[1] ** -0.5
        if "attention.dense." in name or "dense_4h_to_h." in name and "linear_proj" not in name \
                or "vision_dense_list." in name or "vision_dense_4h_to_h_list." in name:
            expect /= (2 * (vit_layers if "vit_model" in name else layers)) ** 0.5
        assert abs(p.std().item() / expect - 1) < 0.1, (name, p.std().item(), expect)
        checked += 1
    assert checked > 30
    embed = tiny_model.transformer.word_embeddings.weight
    assert abs(embed.std().item() - 0.02) < 0.002


def test_random_vit_positions_are_sine_cosine_codes(tiny_model):
    """A ViT trained from scratch must tell patches apart from the first step: the patch rows of its
    position table are 2-D sine-cosine codes (distinct, unit scale), the CLS row keeps SAT's std 0.02."""
    from models.eva import sincos_2d_positions
    vit = tiny_model.mixins["eva"].vit_model
    prop = vit.transformer.property
    table = vit.transformer.position_embeddings.weight.detach()
    patches = table[prop.pre_len:prop.pre_len + prop.num_patches]  # [P, width]
    assert torch.equal(patches, sincos_2d_positions(*prop.grid_size, table.shape[1]))
    assert abs(patches.pow(2).mean().item() - 0.5) < 0.05  # sin^2 + cos^2 = 1 per pair
    distances = torch.cdist(patches, patches) + torch.eye(len(patches)) * 1e3
    assert distances.min() > 0.5  # no two patches share a code
    # neighbours along x and along y differ in different dims (rows of the grid are not confused with columns)
    w = prop.grid_size[1]
    along_x, along_y = (patches[1] - patches[0]).abs(), (patches[w] - patches[0]).abs()
    half = table.shape[1] // 2
    assert along_x[:half].max() < 1e-6 < along_x[half:].max() and along_y[half:].max() < 1e-6 < along_y[:half].max()
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_positions(2, 2, 6)


def test_checkpoint_round_trip(tiny_model, tiny_config, image_batch, tmp_path):
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (1, 5)))
    tiny_model.save_pretrained(tmp_path / "ckpt", iteration=7)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "7"
    assert (tmp_path / "ckpt" / "7" / STATE_FILE).is_file()
    loaded, args = CogVLMModel.from_pretrained(str(tmp_path / "ckpt"))
    assert args.image_length == tiny_config.image_length
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs)[0], loaded.eval()(**inputs)[0])


def _save_state(tmp_path, model, state):
    model.save_pretrained(tmp_path)
    torch.save({"module": state}, tmp_path / "1" / STATE_FILE)


def test_missing_weight_is_named(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    del state["mixins.rotary.vision_dense_list.1.weight"]
    _save_state(tmp_path, tiny_model, state)
    with pytest.raises(CheckpointError, match=r"missing weight\(s\): mixins\.rotary\.vision_dense_list\.1\.weight"):
        CogVLMModel.from_pretrained(str(tmp_path))


def test_unexpected_and_misshaped_weights_are_named(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state["mixins.extra.weight"] = torch.zeros(2)
    state["mixins.eva.boi"] = torch.zeros(1, 1, 7)
    _save_state(tmp_path, tiny_model, state)
    with pytest.raises(CheckpointError) as err:
        CogVLMModel.from_pretrained(str(tmp_path))
    assert "mixins.extra.weight" in str(err.value) and "mixins.eva.boi" in str(err.value)


def test_inv_freq_may_be_absent(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    inv = state.pop("mixins.rotary.rotary_emb.inv_freq")
    _save_state(tmp_path, tiny_model, state)
    loaded, _ = CogVLMModel.from_pretrained(str(tmp_path))
    assert torch.equal(loaded.mixins["rotary"].rotary_emb.inv_freq, inv)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Download cogvlm-chat-v1.1.zip"):
        CogVLMModel.from_pretrained("cogvlm-chat-v1.1")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a preset"):
        CogVLMModel.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "model_config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        CogVLMModel.from_pretrained(str(tmp_path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("size", ["tiny", "1b"])
def test_bf16_gpu_matches_cpu_fp32(size, tiny_config):
    from tests.helpers import image_prompt_inputs
    cfg = tiny_config if size == "tiny" else tiny_config.replace(
        num_layers=16, hidden_size=2048, num_attention_heads=16, inner_hidden_size=5504, vocab_size=32000,
        num_vision_expert_layers=16)
    model = CogVLMModel(CogVLMModel.get_args(**cfg.to_dict())).eval()
    inputs = image_prompt_inputs(cfg, torch.randint(3, cfg.vocab_size, (1, 16)))
    with torch.no_grad():
        ref = model(**inputs)[0]
        gpu = model.cuda().bfloat16()
        moved = {k: (v.cuda().bfloat16() if k == "vision_image" else v.cuda()) if torch.is_tensor(v) else v
                 for k, v in inputs.items()}
        out = gpu(**moved)[0].float().cpu()
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
