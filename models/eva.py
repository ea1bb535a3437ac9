"""The vision side: EVA2-CLIP ViT (post-sublayer-norm blocks, full attention, CLS dropped), the GLU
projector into the language width, and the `eva` mixin that writes [boi, image, eoi] into the embeddings."""
import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin, BaseModel
from sat.model.official.vit_model import ImagePatchEmbeddingMixin, InterpolatedPositionEmbeddingMixin, ViTProperty

from .sat_build import build_transformer


class DropClsTokenMixin(BaseMixin):
    """Return the patch tokens only: [B, pre + P + post, h] -> [B, P, h]."""

    def final_forward(self, logits, **kw_args):
        prop = self.transformer.property
        return logits[:, prop.pre_len:prop.pre_len + prop.num_patches]


class PostSublayerNormMixin(BaseMixin):
    """EVA2 block: x + LN1(attn(x)), then y + LN2(mlp(y)); the norms sit after each sublayer."""

    def layer_forward(self, hidden_states, mask, *args, **kw_args):
        layer = self.transformer.layers[kw_args["layer_id"]]
        hidden_states = hidden_states + layer.input_layernorm(layer.attention(hidden_states, mask, **kw_args))
        return hidden_states + layer.post_attention_layernorm(layer.mlp(hidden_states, **kw_args))


class FullAttentionMixin(BaseMixin):
    """Unmasked multi-head attention over all image tokens through SDPA."""

    def attention_forward(self, hidden_states, mask, **kw_args):
        attn = self.transformer.layers[kw_args["layer_id"]].attention
        b, n, _ = hidden_states.shape
        heads = attn.num_attention_heads_per_partition
        qkv = attn.query_key_value(hidden_states)
        qkv = qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [3, b, heads, n, d]
        dropout_p = attn.attention_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(b, n, -1)  # [b, n, heads * d]
        output = attn.dense(context)
        return attn.output_dropout(output) if self.training else output


def sincos_2d_positions(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """[grid_h * grid_w, dim] fixed 2-D sine-cosine codes of the patch grid, row-major like the patches:
    a quarter of the dims each for sin(y w), cos(y w), sin(x w), cos(x w), frequencies w = 10000^(-k/q)."""
    if dim % 4:
        raise ValueError(f"the ViT width must be a multiple of 4 for 2-D sine-cosine positions, got {dim}")
    q = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float) / q)  # [q]
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float), torch.arange(grid_w, dtype=torch.float),
                            indexing="ij")  # [grid_h, grid_w] each
    codes = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):  # [P]
        angles = coord[:, None] * freqs[None, :]  # [P, q]
        codes += [angles.sin(), angles.cos()]
    return torch.cat(codes, dim=1)  # [P, dim]


class EVA2CLIPModel(BaseModel):
    """EVA2-CLIP ViT as a SAT model; parameter names match the official `vit_model`."""

    def __init__(self, args, transformer=None, params_dtype=torch.float, **kwargs):
        prop = ViTProperty(args.image_size, args.patch_size, args.pre_len, args.post_len)
        args.max_sequence_length = prop.seq_len
        if transformer is None:
            transformer = build_transformer(args, params_dtype=params_dtype, activation_func=F.gelu, **kwargs)
        super().__init__(args, transformer=transformer, params_dtype=params_dtype, **kwargs)
        self.transformer.property = prop
        self.add_mixin("patch_embedding", ImagePatchEmbeddingMixin(args.in_channels, args.hidden_size, prop))
        self.add_mixin("pos_embedding", InterpolatedPositionEmbeddingMixin())
        self.add_mixin("final", DropClsTokenMixin())
        self.add_mixin("newpost", PostSublayerNormMixin())
        self.add_mixin("attention", FullAttentionMixin())

    def init_patch_positions(self) -> None:
        """Set the patch rows of the position table to 2-D sine-cosine codes (CLS keeps its own).

        SAT draws them with std 0.02, about 2% of a patch embedding at small widths: a ViT trained from
        scratch then cannot tell where a patch is for hundreds of steps (left/right, which bar is taller,
        which shape comes first). Pretrained checkpoints overwrite this."""
        prop = self.transformer.property
        table = self.transformer.position_embeddings.weight
        with torch.no_grad():
            table[prop.pre_len:prop.pre_len + prop.num_patches] = sincos_2d_positions(
                *prop.grid_size, table.shape[1]).to(table.dtype)

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("EVA2CLIP", "EVA2CLIP configuration")
        group.add_argument("--image-size", nargs="+", type=int, default=[224, 224])
        group.add_argument("--pre-len", type=int, default=1)
        group.add_argument("--post-len", type=int, default=0)
        group.add_argument("--in-channels", type=int, default=3)
        group.add_argument("--patch-size", type=int, default=14)
        return parser


class GLUProjector(nn.Module):
    """ViT width -> LM width: linear, LayerNorm+GELU, then a SiLU-gated MLP (official `GLU`)."""

    def __init__(self, in_features: int, hidden_size: int, inner_hidden_size: int):
        super().__init__()
        self.linear_proj = nn.Linear(in_features, hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.act1 = nn.GELU()
        self.dense_h_to_4h = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.gate_proj = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(inner_hidden_size, hidden_size, bias=False)

    def forward(self, x):
        x = self.act1(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


def vit_args_from(args) -> argparse.Namespace:
    """The ViT's own Namespace: its `eva_args` plus the parent's run-time settings (dtype, init, mode)."""
    eva_args = args.eva_args if isinstance(args.eva_args, dict) else json.loads(args.eva_args)
    inherited = {k: getattr(args, k) for k in ("skip_init", "use_gpu_initialization", "bf16", "fp16", "mode",
                                                "world_size", "rank", "local_rank", "device", "seed",
                                                "checkpoint_activations", "checkpoint_num_layers")
                 if hasattr(args, k)}
    if hasattr(args, "vit_checkpoint_activations"):
        inherited["checkpoint_activations"] = args.vit_checkpoint_activations
    inherited.update(hidden_dropout=0.0, attention_dropout=0.0)
    merged = {**eva_args, **inherited, "model_parallel_size": getattr(args, "model_parallel_size", 1)}
    vit_args = EVA2CLIPModel.get_args(**merged)
    vit_args.image_size = list(vit_args.image_size)
    return vit_args


def vision_inputs(kw_args) -> dict:
    """The ViT's keyword arguments: every `vision_*` argument with the prefix removed."""
    return {k[len("vision_"):]: v for k, v in kw_args.items()
            if k.startswith("vision_") and k != "vision_expert_mask"}


class ImageMixin(BaseMixin):
    """Mixin `eva`: encodes images and replaces the BOI..EOI embeddings with [boi, image tokens, eoi]."""

    def __init__(self, args, params_dtype=torch.float):
        super().__init__()
        vit_args = vit_args_from(args)
        self.vit_model = EVA2CLIPModel(vit_args, params_dtype=params_dtype)
        self.linear_proj = GLUProjector(vit_args.hidden_size, args.hidden_size, args.inner_hidden_size)
        self.image_length = args.image_length
        self.boi = nn.Parameter(torch.zeros(1, 1, args.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, args.hidden_size))
        self.always_encode = False  # ZeRO-3: run the ViT even on a batch without images (see run_every_module)
        self.image_size = list(vit_args.image_size)

    def dummy_contribution(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings + 0 * (ViT, projector, boi, eoi on one blank image): the same values, but every
        rank's forward and backward touch the vision parameters, which ZeRO-3's collectives require."""
        param = self.boi
        blank = torch.zeros(1, 3, *self.image_size, dtype=param.dtype, device=param.device)
        encoded = self.encode_images(image=blank)  # [1, L, hidden]
        zero = (encoded.sum() + self.boi.sum() + self.eoi.sum()) * 0.0
        return embeddings + zero.to(embeddings.dtype)

    def encode_images(self, **vision_kwargs) -> torch.Tensor:
        """vision_image [n_img, 3, H, W] (+ input_ids/attention_mask) -> projected tokens [n_img, L, hidden]."""
        vision_kwargs.setdefault("position_ids", None)
        image = vision_kwargs["image"]
        n = image.shape[0]
        vision_kwargs.setdefault("input_ids", torch.zeros(n, 1, dtype=torch.long, device=image.device))
        vision_kwargs.setdefault("attention_mask", torch.ones(n, 1, dtype=image.dtype, device=image.device))
        return self.linear_proj(self.vit_model(**vision_kwargs)[0])

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        embeddings = self.transformer.word_embeddings(input_ids)
        image_embed_mask = kw_args.get("image_embed_mask")
        image_embeds = kw_args.get("image_embeds")
        if image_embeds is None:
            inputs = vision_inputs(kw_args)
            if input_ids.shape[1] == 1 or not inputs or inputs.get("image") is None:
                if self.always_encode and torch.is_grad_enabled():
                    return self.dummy_contribution(embeddings)
                return embeddings
            image_embeds = self.encode_images(**inputs)
        if image_embed_mask is None:
            raise ValueError("image inputs were given without image_embed_mask")
        n_img, length, hidden = image_embeds.shape
        span = torch.cat([self.boi.expand(n_img, 1, hidden), image_embeds, self.eoi.expand(n_img, 1, hidden)],
                         dim=1)  # [n_img, L + 2, hidden]
        mask = image_embed_mask.bool()
        if int(mask.sum()) != span.shape[0] * span.shape[1]:
            raise ValueError(f"image_embed_mask marks {int(mask.sum())} positions but {n_img} image(s) of "
                             f"{length} tokens need {n_img * (length + 2)} (BOI + tokens + EOI each)")
        embeddings = embeddings.clone()
        embeddings[mask] = span.reshape(-1, hidden).to(embeddings.dtype)
        return embeddings
