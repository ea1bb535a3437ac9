"""CogVLM's visual expert: tokens flagged by `vision_expert_mask` use their own QKV, attention output
and FFN weights in every expert layer; all other tokens use the language weights. Mixin names and
parameter names match the official checkpoints (`mlp`, `rotary`)."""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin
from sat.mpu.utils import split_tensor_along_last_dim

from .attention import sdpa
from .rotary import RotaryEmbedding


def expert_layers(num_layers: int, num_vision_expert_layers: int):
    return list(range(min(num_vision_expert_layers, num_layers)))


class ExpertRouting:
    """Which flattened token positions use the expert weights, found once per forward (one host sync)
    so that each layer routes by index, with no per-layer `mask.any()` or boolean indexing.

    The expert path always runs, on zero rows when no token is an image token: under ZeRO-3 every rank
    must gather the same parameters, whatever its batch holds.
    """

    def __init__(self, vision_mask: torch.Tensor):
        flat = vision_mask.reshape(-1).bool()  # [b * s]
        self.shape = tuple(vision_mask.shape)
        self.vision_index = flat.nonzero().squeeze(1)  # [n_vision]
        self.language_index = (~flat).nonzero().squeeze(1)  # [n_language]


def routing_from(kw_args) -> Optional[ExpertRouting]:
    """The forward's ExpertRouting (built by CogVLMModel.forward), or one built from a bare mask."""
    routing = kw_args.get("expert_routing")
    if routing is None and kw_args.get("vision_expert_mask") is not None:
        routing = ExpertRouting(kw_args["vision_expert_mask"])
    return routing


def route(x: torch.Tensor, routing: Optional[ExpertRouting], language_fn: Callable, vision_fn: Optional[Callable],
          out_features: int) -> torch.Tensor:
    """Apply `vision_fn` to the routed tokens of x [b, s, in] and `language_fn` to the others."""
    if vision_fn is None or routing is None:
        return language_fn(x)
    flat = x.reshape(-1, x.shape[-1])  # [b * s, in]
    lang = language_fn(flat.index_select(0, routing.language_index))  # [n_language, out]
    vis = vision_fn(flat.index_select(0, routing.vision_index))  # [n_vision, out] (maybe 0 rows)
    out = flat.new_zeros(flat.shape[0], out_features, dtype=lang.dtype)
    out = out.index_copy(0, routing.language_index, lang).index_copy(0, routing.vision_index, vis.to(lang.dtype))
    return out.reshape(*x.shape[:-1], out_features)  # [b, s, out]


def _linears(layer_ids, in_features, out_features):
    return nn.ModuleDict({str(i): nn.Linear(in_features, out_features, bias=False) for i in layer_ids})


class VisionExpertMLPMixin(BaseMixin):
    """Mixin `mlp`: SwiGLU FFN; `gate_proj` is the language gate of every layer, `vision_*` the expert's."""

    def __init__(self, hidden_size: int, inner_hidden_size: int, num_layers: int, num_vision_expert_layers: int):
        super().__init__()
        self.expert_layer_ids = expert_layers(num_layers, num_vision_expert_layers)
        self.gate_proj = nn.ModuleList([nn.Linear(hidden_size, inner_hidden_size, bias=False)
                                        for _ in range(num_layers)])
        self.vision_dense_h_to_4h_list = _linears(self.expert_layer_ids, hidden_size, inner_hidden_size)
        self.vision_dense_4h_to_h_list = _linears(self.expert_layer_ids, inner_hidden_size, hidden_size)
        self.vision_gate_proj = _linears(self.expert_layer_ids, hidden_size, inner_hidden_size)

    def mlp_forward(self, hidden_states, **kw_args):
        layer_id = int(kw_args["layer_id"])
        mlp = self.transformer.layers[layer_id].mlp
        gate = self.gate_proj[layer_id]

        def language(x):
            return mlp.dense_4h_to_h(mlp.activation_func(gate(x)) * mlp.dense_h_to_4h(x))

        vision = None
        if str(layer_id) in self.vision_gate_proj:
            key = str(layer_id)

            def vision(x):
                up = self.vision_dense_h_to_4h_list[key](x) * mlp.activation_func(self.vision_gate_proj[key](x))
                return self.vision_dense_4h_to_h_list[key](up)

        return route(hidden_states, routing_from(kw_args), language, vision, hidden_states.shape[-1])


class VisionExpertAttentionMixin(BaseMixin):
    """Mixin `rotary`: rotary self-attention whose QKV and output projections are routed per token."""

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, num_vision_expert_layers: int):
        super().__init__()
        self.expert_layer_ids = expert_layers(num_layers, num_vision_expert_layers)
        self.rotary_emb = RotaryEmbedding(hidden_size // num_heads)
        self.vision_query_key_value_list = _linears(self.expert_layer_ids, hidden_size, 3 * hidden_size)
        self.vision_dense_list = _linears(self.expert_layer_ids, hidden_size, hidden_size)

    def attention_fn(self, q, k, v, mask, dropout_fn, kv_cache=None, attention_is_causal=False, **kw_args):
        """Hook `attention_fn` (SAT's CachedAutoregressiveMixin can wrap it). q/k/v [b, h, s, d]."""
        dropout_p = dropout_fn.p if dropout_fn is not None else 0.0
        if kv_cache is not None:
            return kv_cache.attend(int(kw_args["layer_id"]), q, k, v, None if attention_is_causal else mask)
        packed = kw_args.get("packed_attention")
        if packed is not None:
            return packed.attend(q, k, v, dropout_p=dropout_p)
        if attention_is_causal:
            return sdpa(q, k, v, causal=True, dropout_p=dropout_p)
        return sdpa(q, k, v, mask, dropout_p=dropout_p)

    def attention_forward(self, hidden_states, mask, **kw_args):
        layer_id = int(kw_args["layer_id"])
        attn = self.transformer.layers[layer_id].attention
        key = str(layer_id)
        expert = key in self.vision_query_key_value_list
        routing = routing_from(kw_args)

        mixed = route(hidden_states, routing, attn.query_key_value,
                      self.vision_query_key_value_list[key] if expert else None, 3 * attn.hidden_size_per_partition)
        q, k, v = (attn._transpose_for_scores(t) for t in split_tensor_along_last_dim(mixed, 3))  # [b, h, s, d]
        q, k = self.rotary_emb(q, k, kw_args["position_ids"])

        attention_fn = attn.hooks.get("attention_fn", self.attention_fn)
        dropout_fn = attn.attention_dropout if self.training else None
        context = attention_fn(q, k, v, mask, dropout_fn, **kw_args)
        context = context.permute(0, 2, 1, 3).reshape(*hidden_states.shape[:-1], -1)  # [b, s, h * d]

        output = route(context, routing, attn.dense, self.vision_dense_list[key] if expert else None,
                       hidden_states.shape[-1])
        return attn.output_dropout(output) if self.training else output
