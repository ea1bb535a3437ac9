"""CogVLMModel: SAT's transformer with a LLaMA backbone (RMSNorm, SwiGLU, rotary) and the four mixins
of the official checkpoints: `eva` (ViT + projector + boi/eoi), `mlp` and `rotary` (vision experts), `lm`."""
import json
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin, BaseModel
from sat.ops.layernorm import RMSNorm

from .attention import PackedAttention, is_causal_mask
from .checkpoint import CheckpointError, check_keys, load_state_dict, save_checkpoint, state_file
from .config import OFFICIAL_ARCHIVES, PRESETS, load_model_config
from .eva import ImageMixin
from .hf_config import is_hf_dir
from .sat_build import build_transformer, rng_preserved
from .vision_expert import ExpertRouting, VisionExpertAttentionMixin, VisionExpertMLPMixin


class LMHeadMixin(BaseMixin):
    """Mixin `lm`: the untied output projection to the vocabulary."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def final_forward(self, logits, **kw_args):
        """hidden [b, s, h] -> logits [b, s, V]; with `logit_positions` (flat indices into b * s) only
        those rows: [K, V] (training computes the head and the loss on labelled positions only)."""
        positions = kw_args.get("logit_positions")
        if positions is not None:
            logits = logits.reshape(-1, logits.shape[-1]).index_select(0, positions)  # [K, h]
        return self.lm_head(logits)


# Linears that write into the residual stream (their init is scaled down with depth).
_RESIDUAL_OUTPUTS = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_EXPERT_RESIDUAL_OUTPUTS = ("vision_dense_list.", "vision_dense_4h_to_h_list.")


class CogVLMModel(BaseModel):
    """Build with `CogVLMModel(CogVLMModel.get_args(**model_config))`, or load with `from_pretrained`.

    forward(input_ids, position_ids, attention_mask, image_embed_mask=, vision_expert_mask=,
            vision_image=, ..., kv_cache=None) -> [logits, *per-layer outputs], like every SAT model.
    attention_mask: [b|1, 1, q, k] with 1 = may attend, or None for causal (right-padded rows need no
    mask: the padding comes after every real token). logit_positions: flat indices into b * s whose
    logits are wanted (then logits are [K, V]). attention_segments [b, s]: rows of packed samples
    (segment ids, 0 = padding), each sample attending only to itself.
    """

    def __init__(self, args, transformer=None, params_dtype=torch.float, **kwargs):
        with rng_preserved():  # the weights come from the torch RNG as it stands; every RNG is left as it was
            self._build(args, transformer, params_dtype, **kwargs)

    def _build(self, args, transformer, params_dtype, **kwargs) -> None:
        if transformer is None:
            transformer = build_transformer(args, params_dtype=params_dtype, layernorm=RMSNorm,
                                            activation_func=F.silu, init_method_std=0.01, **kwargs)
        super().__init__(args, transformer=transformer, params_dtype=params_dtype, **kwargs)
        del self.transformer.position_embeddings  # rotary positions only
        self.image_length = args.image_length
        num_expert_layers = getattr(args, "num_vision_expert_layers", 32)
        self.add_mixin("lm", LMHeadMixin(args.vocab_size, args.hidden_size))
        self.add_mixin("eva", ImageMixin(args, params_dtype=params_dtype))
        self.add_mixin("mlp", VisionExpertMLPMixin(args.hidden_size, args.inner_hidden_size, args.num_layers,
                                                   num_expert_layers))
        self.add_mixin("rotary", VisionExpertAttentionMixin(args.hidden_size, args.num_attention_heads,
                                                            args.num_layers, num_expert_layers))
        if not getattr(args, "skip_init", False) and torch.get_default_device().type != "meta":
            self.init_new_weights()
        self.args = args

    def init_new_weights(self) -> None:
        """Draw every random matrix with std 1/sqrt(fan_in), the residual-branch outputs further scaled by
        1/sqrt(2 * layers); embeddings keep SAT's 0.02, except the ViT's patch positions, which start as
        2-D sine-cosine codes (`EVA2CLIPModel.init_patch_positions`).

        SAT's fixed std (0.02, 0.01 here) suits widths in the thousands; at the tiny preset's width 128
        it leaves attention almost uniform and the image unseen for hundreds of steps. Checkpoints
        overwrite all of this, so it only matters for training from random weights.
        """
        vit_layers = len(self.mixins["eva"].vit_model.transformer.layers)
        lm_layers = len(self.transformer.layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() != 2 or "embeddings" in name:
                    continue
                layers = vit_layers if name.startswith("mixins.eva.vit_model.") else lm_layers
                std = p.shape[1] ** -0.5
                if name.endswith(_RESIDUAL_OUTPUTS) or any(k in name for k in _EXPERT_RESIDUAL_OUTPUTS):
                    std /= (2 * layers) ** 0.5
                nn.init.normal_(p, std=std)
        self.mixins["eva"].vit_model.init_patch_positions()

    def position_embedding_forward(self, *args, **kwargs):
        return None

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("CogVLM", "CogVLM configuration")
        group.add_argument("--image_length", type=int, default=256)
        group.add_argument("--eva_args", type=json.loads, default={})
        group.add_argument("--num_vision_expert_layers", type=int, default=32)
        group.add_argument("--bos-token-id", type=int, default=1)
        group.add_argument("--eos-token-id", type=int, default=2)
        group.add_argument("--pad-token-id", type=int, default=0)
        return parser

    def forward(self, input_ids, position_ids, attention_mask=None, image_embed_mask=None, vision_expert_mask=None,
                **kwargs):
        if input_ids.shape[1] == 1:  # a decode step: text token only, language weights (official behaviour)
            image_embed_mask = vision_expert_mask = None
        if kwargs.get("kv_cache") is None:
            kwargs.pop("kv_cache", None)
        segments = kwargs.pop("attention_segments", None)
        if segments is not None:  # rows of packed samples: block-diagonal causal, planned once
            kwargs["packed_attention"] = PackedAttention(segments)
            attention_mask = None
        causal = attention_mask is None or is_causal_mask(attention_mask)
        if vision_expert_mask is not None:  # routed once here, not in every layer
            kwargs["expert_routing"] = ExpertRouting(vision_expert_mask)
        if attention_mask is None:
            attention_mask = torch.ones(1, 1, device=input_ids.device)
        return super().forward(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               image_embed_mask=image_embed_mask, vision_expert_mask=vision_expert_mask,
                               attention_is_causal=causal, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_preset, args=None, overrides=None, iteration=None, trust_checkpoint=False):
        """(model, args) from a checkpoint directory or a preset name; see `from_pretrained` below."""
        return from_pretrained(path_or_preset, args, overrides=overrides, iteration=iteration,
                               trust_checkpoint=trust_checkpoint)

    def model_config(self) -> dict:
        """The official model_config.json content for this model."""
        keys = ("model_class", "tokenizer_type", "text_processor_version", "num_layers", "hidden_size",
                "num_attention_heads", "vocab_size", "layernorm_order", "model_parallel_size",
                "max_sequence_length", "inner_hidden_size", "use_bias", "image_length", "eva_args",
                "layernorm_epsilon", "num_vision_expert_layers")
        config = {k: getattr(self.args, k) for k in keys if hasattr(self.args, k)}
        config["model_class"] = "CogVLMModel"
        return config

    def save_pretrained(self, path, iteration=1, extra=None, save_format: str = "pt"):
        """Write this model in the official SAT layout (loadable by `from_pretrained`); save_format
        "safetensors" writes the weights without pickle. For the Hugging Face layout see models.convert."""
        return save_checkpoint(self, path, self.model_config(), iteration=iteration, extra=extra,
                               save_format=save_format)

    def encode_images(self, vision_image, **vision_kwargs) -> torch.Tensor:
        """[n_img, 3, H, W] -> projected image tokens [n_img, image_length, hidden] (pass as image_embeds=)."""
        return self.mixins["eva"].encode_images(image=vision_image, **vision_kwargs)


def run_every_module(model: "CogVLMModel", enabled: bool = True) -> None:
    """Make every training forward run the ViT and the expert layers, whatever the batch holds.

    Under ZeRO-3 each rank gathers a module's parameters when it runs; a rank whose batch has no image
    would skip the ViT and the others would wait for it forever. The expert layers always run (on zero
    rows for text-only tokens); with this the ViT does too, on a blank image whose output is multiplied
    by zero. Used by fine-tuning and pretraining under ZeRO-3.
    """
    model.mixins["eva"].always_encode = enabled


def build_model_args(model_config: dict, args=None, overrides: Optional[dict] = None):
    """SAT Namespace for `model_config`; architecture keys come from the config, run-time keys
    (dtype, device, mode, ...) from `args` when given."""
    built = CogVLMModel.get_args(**model_config)
    if args is not None:
        for k, v in vars(args).items():
            if k not in model_config:
                setattr(built, k, v)
    for k, v in (overrides or {}).items():
        setattr(built, k, v)
    return built


def from_pretrained(path_or_preset: str, args=None, overrides: Optional[dict] = None,
                    iteration=None, trust_checkpoint: bool = False) -> Tuple["CogVLMModel", object]:
    """Load a checkpoint directory in the official SAT layout or the Hugging Face (`cogvlm-*-hf`) layout,
    or build a preset; returns (model, args). HF weights are renamed in memory and read lazily.
    A .pt file is read without running pickled code; trust_checkpoint=True allows an old one that needs it.

    `cogvlm-tiny` builds with random weights. The 17B presets must be downloaded first (nothing is
    fetched here): unzip the official archive and pass its directory, or put it under $SAT_HOME.
    """
    path = Path(path_or_preset).expanduser()
    if not path.is_dir():
        name = str(path_or_preset)
        if name in PRESETS:
            home = Path(os.environ.get("SAT_HOME", Path.home() / ".sat_models")) / name
            if home.is_dir():
                path = home
            elif name in OFFICIAL_ARCHIVES:
                raise FileNotFoundError(
                    f"{name} is not on this machine. Download {OFFICIAL_ARCHIVES[name]} (the official SAT "
                    f"checkpoint), unzip it to {home} (or anywhere) and pass that directory.")
            else:
                model_args = build_model_args(PRESETS[name].to_dict(), args, overrides)
                return _place(CogVLMModel(model_args), model_args), model_args
        else:
            raise FileNotFoundError(f"{name}: neither a checkpoint directory nor a preset "
                                    f"({', '.join(PRESETS)})")
    if is_hf_dir(path):
        return _from_hf_dir(path, args, overrides)
    model_config = load_model_config(str(path))
    if model_config.get("model_class", "CogVLMModel") != "CogVLMModel":
        raise CheckpointError(f"{path / 'model_config.json'}: model_class is {model_config['model_class']!r}, "
                              "expected 'CogVLMModel'")
    model_args = build_model_args(model_config, args, overrides)
    state = load_state_dict(path, iteration, trust=trust_checkpoint)
    return _assign(model_args, state, f"{state_file(path, iteration)}"), model_args


def _from_hf_dir(path: Path, args, overrides) -> Tuple["CogVLMModel", object]:
    """(model, args) from a Hugging Face directory: its weights renamed to ours as they are read (no
    second copy on disk, one in memory: the tensors stay memory-mapped unless cast to the run's dtype)."""
    from .convert import load_hf_state
    from .hf_config import read_hf_config, sat_config_from_hf
    model_config = sat_config_from_hf(read_hf_config(path), str(path / "config.json"))
    model_args = build_model_args(model_config, args, overrides)
    state = load_hf_state(path, model_config, dtype=run_dtype(model_args))
    return _assign(model_args, state, str(path)), model_args


def run_dtype(args) -> torch.dtype:
    """The parameter dtype SAT's `bf16` / `fp16` flags ask for (float32 otherwise)."""
    return torch.bfloat16 if getattr(args, "bf16", False) else torch.half if getattr(args, "fp16", False) else torch.float


def _assign(model_args, state, source: str) -> "CogVLMModel":
    """A model built on meta whose tensors become `state`'s (checked by name and shape first)."""
    with torch.device("meta"):
        model = CogVLMModel(model_args)
    check_keys({k: v.shape for k, v in model.state_dict().items()}, state, source)
    model.load_state_dict(state, strict=False, assign=True)
    rotary = model.mixins["rotary"].rotary_emb
    if rotary.inv_freq.is_meta:
        rotary.inv_freq = rotary.compute_inv_freq()
    return _place(model, model_args)


def _place(model: "CogVLMModel", args) -> "CogVLMModel":
    """Cast to the run's dtype and move to its device (SAT's `bf16`/`fp16`/`device` args)."""
    if getattr(args, "bf16", False):
        model = model.bfloat16()
    elif getattr(args, "fp16", False):
        model = model.half()
    else:
        model = model.float()
    device = getattr(args, "device", "cpu")
    if device not in (None, "cpu", -1) and torch.cuda.is_available():
        model = model.to(torch.device("cuda", device) if isinstance(device, int) else device)
    return model

