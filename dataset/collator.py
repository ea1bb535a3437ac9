"""Batch samples: right-pad to the longest sample and stack images as the official `vision_*` inputs.

A right-padded batch of one sample per row needs no mask (plain causal attention: the padding comes
after every real token, so no real token can reach it). Rows that hold several packed samples carry
their segment ids; `attention_mask_from_segments` builds the dense block mask where one is wanted."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .text_processor import IGNORE_INDEX

# Per-token keys and their padding value (input_ids pads with the collator's pad_token_id).
TOKEN_KEYS = ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask",
              "image_rope_mask", "segment_ids")
_PAD = {"labels": IGNORE_INDEX}
_INT_KEYS = ("context_length", "num_images", "truncated")  # per-sample ints -> [B] tensors


def attention_mask_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, n] segment ids (0 = padding) -> [B, 1, n, n] bool: causal, within one segment only.

    Padding rows see earlier padding (never an empty row, which would give NaNs in softmax);
    real tokens never see padding or another packed sample.
    """
    pos = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    causal = pos[:, None] >= pos[None, :]  # [n, n], True on and below the diagonal
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, n, n]
    return (same & causal).unsqueeze(1)  # [B, n, n] -> [B, 1, n, n]


class DataCollator:
    """`DataCollator(pad_token_id)(samples)` -> a batch dict for CogVLM's forward plus bookkeeping.

    Returns input_ids, labels, position_ids, image_embed_mask, vision_expert_mask, image_rope_mask,
    segment_ids [B, n] (long); attention_mask None (causal: one sample per row, right-padded); lengths, context_length, num_images,
    truncated [B]; vision_image [B_img,3,H,W], vision_input_ids / vision_attention_mask [B_img,1]
    when the batch has images; loss_weights [B, n] (float) when the samples carry per-stage loss
    weights; question_id (list). Images are in sample order, then marker order.
    """

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, examples: Sequence[dict]) -> Dict[str, object]:
        if not examples:
            raise ValueError("collator got an empty batch")
        tokens = [self._token_tensors(i, ex) for i, ex in enumerate(examples)]
        lengths = [len(t["input_ids"]) for t in tokens]
        n = max(lengths)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: Dict[str, object] = {}
        for key in TOKEN_KEYS:
            fill = self.pad_token_id if key == "input_ids" else _PAD.get(key, 0)
            out = torch.full((len(tokens), n), fill, dtype=torch.long)  # [B, n]
            for row, t in enumerate(tokens):
                out[row, :lengths[row]] = t[key]
            batch[key] = out
        batch["attention_mask"] = None  # plain causal attention; the padded tail never reaches real tokens
        batch["lengths"] = torch.tensor(lengths, dtype=torch.long)
        if all("loss_weights" in ex for ex in examples):  # per-stage loss weights (float; padding 0)
            weights = torch.zeros(len(tokens), n)  # [B, n]
            for row, ex in enumerate(examples):
                weights[row, :lengths[row]] = torch.as_tensor(ex["loss_weights"], dtype=torch.float)
            batch["loss_weights"] = weights
        for key in _INT_KEYS:
            if all(key in ex for ex in examples):
                batch[key] = torch.tensor([int(ex[key]) for ex in examples], dtype=torch.long)
        batch.update(self._vision(examples, tokens))
        for key in examples[0]:
            if key not in batch and key not in TOKEN_KEYS and key not in ("vision", "loss_weights"):
                batch[key] = [ex.get(key) for ex in examples]  # ids and other per-sample extras
        return batch

    @staticmethod
    def _token_tensors(index: int, example) -> Dict[str, torch.Tensor]:
        if not isinstance(example, dict) or not example:
            raise ValueError(f"collator: sample {index} of the batch is {example!r}, not a sample; a dataset must "
                             f"raise a clear error for a bad sample instead of returning an empty one")
        out = {}
        for key in TOKEN_KEYS:
            if key not in example:
                if key == "segment_ids":  # older processors have no segments: the sample is one
                    continue
                raise ValueError(f"collator: sample {index} ({example.get('question_id', '?')}) has no {key!r}")
            value = example[key]
            value = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.as_tensor(value)
            if value.dim() == 2 and value.shape[0] == 1:
                value = value[0]  # official processors return [1, T]
            if value.dim() != 1:
                raise ValueError(f"collator: sample {index} {key!r} must be 1-D tokens, got shape {tuple(value.shape)}")
            out[key] = value.long()
        out.setdefault("segment_ids", torch.ones_like(out["input_ids"]))
        lens = {k: len(v) for k, v in out.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"collator: sample {index} has per-token fields of different lengths {lens}")
        return out

    @staticmethod
    def _vision(examples: Sequence[dict], tokens: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Stack each sample's images; their count must equal its image spans (runs of image_rope_mask)."""
        parts: Dict[str, List[torch.Tensor]] = {}
        for i, (ex, t) in enumerate(zip(examples, tokens)):
            rope = t["image_rope_mask"]
            spans = int(((rope[1:] == 1) & (rope[:-1] == 0)).sum()) + int(rope[:1].sum())
            vision = ex.get("vision") or {}
            images = vision.get("image")
            count = 0 if images is None else images.shape[0]
            if count != spans:
                raise ValueError(f"collator: sample {i} ({ex.get('question_id', '?')}) has {spans} image span(s) "
                                 f"but {count} image(s)")
            for key, value in vision.items():
                if isinstance(value, torch.Tensor):
                    parts.setdefault(key, []).append(value)
        return {f"vision_{key}": torch.cat(values) for key, values in parts.items()}


data_collator = DataCollator()  # pad id 0 (LLaMA's unk), as the tiny and official tokenizers allow
