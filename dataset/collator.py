"""Batch samples: right-pad to the longest sample and stack images as the official `vision_*` inputs.

A right-padded batch of one sample per row needs no mask (plain causal attention: the padding comes
after every real token, so no real token can reach it). Rows that hold several packed samples carry
their segment ids; `attention_mask_from_segments` builds the dense block mask where one is wanted."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from models.attention import segment_causal_mask

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
    return segment_causal_mask(segment_ids)


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
        if any(isinstance(ex, (list, tuple)) for ex in examples):
            return self._packed(examples)
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

    def _packed(self, rows: Sequence[Sequence[dict]]) -> Dict[str, object]:
        """Rows of packed samples (dataset.packing): each row is its samples one after the other, with
        segment ids 1..k, each sample's own position ids (restarting at 0), masks, labels and images.
        `attention_segments` [B, n] tells the model to attend within a segment only."""
        samples, merged = [], []
        for r, row in enumerate(rows):
            if not isinstance(row, (list, tuple)) or not row:
                raise ValueError(f"collator: packed row {r} is {row!r}, not a list of samples")
            merged.append(self._merge_row([self._token_tensors(len(samples) + i, ex) for i, ex in enumerate(row)]))
            samples += list(row)
        batch = self(merged_as_samples(merged, rows))
        batch["attention_segments"] = batch["segment_ids"]
        batch["samples_per_row"] = torch.tensor([len(row) for row in rows], dtype=torch.long)
        for key in _INT_KEYS:  # per sample, not per row
            if all(key in ex for ex in samples):
                batch[key] = torch.tensor([int(ex[key]) for ex in samples], dtype=torch.long)
        batch["question_id"] = [ex.get("question_id") for ex in samples]
        return batch

    @staticmethod
    def _merge_row(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """One row from its samples' token tensors: concatenated, segment k = the k-th sample."""
        row = {key: torch.cat([p[key] for p in parts]) for key in TOKEN_KEYS if key != "segment_ids"}
        row["segment_ids"] = torch.cat([torch.full_like(p["input_ids"], k + 1) for k, p in enumerate(parts)])
        starts = torch.tensor([0] + [len(p["input_ids"]) for p in parts[:-1]]).cumsum(0)
        row["labels"][starts] = IGNORE_INDEX  # a sample's first token is never the target of the one before
        return row

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


def merged_as_samples(merged: List[Dict[str, torch.Tensor]], rows: Sequence[Sequence[dict]]) -> List[dict]:
    """Packed rows in the form of single samples: the images of a row's samples in order, and their
    per-stage loss weights concatenated when every sample has them."""
    out = []
    for row_tokens, row in zip(merged, rows):
        images = [ex.get("vision") or {} for ex in row]
        vision: Dict[str, torch.Tensor] = {}
        for key in sorted({key for v in images for key in v if isinstance(v[key], torch.Tensor)}):
            vision[key] = torch.cat([v[key] for v in images if key in v])
        one = dict(row_tokens, vision=vision)
        if all("loss_weights" in ex for ex in row):
            one["loss_weights"] = torch.cat([torch.as_tensor(ex["loss_weights"], dtype=torch.float) for ex in row])
        out.append(one)
    return out


data_collator = DataCollator()  # pad id 0 (LLaMA's unk), as the tiny and official tokenizers allow
