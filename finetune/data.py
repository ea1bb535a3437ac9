"""The dataset factory and collator handed to SAT's `training_main`, and the split of a batch into
model inputs and training-only fields."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

# What CogVLMModel.forward takes from a collated batch; the rest (labels, lengths, ids) is bookkeeping.
MODEL_KEYS = ("input_ids", "position_ids", "attention_mask", "image_embed_mask", "vision_expert_mask",
              "vision_image", "vision_input_ids", "vision_attention_mask")
FLOAT_KEYS = ("vision_image",)  # cast to the run's dtype (bf16/fp16) before the forward


class DatasetFactory:
    """`create_dataset_function(path, args)` for SAT: one `dataset.ItemDataset` per data file
    (`PretrainDataset` with stage "pretrain")."""

    def __init__(self, tokenizer, image_size, image_length: int, max_length: int, template: str,
                 image_root=None, strict: bool = False, truncation: str = "cut", log=print, stage: str = "sft",
                 stage_weights=None):
        from dataset import ImageProcessor, TextProcessor
        self.image_processor = ImageProcessor(image_size)
        self.text_processor = TextProcessor(tokenizer, max_length=max_length, image_length=image_length,
                                            template=template, truncation=truncation, stage_weights=stage_weights)
        self.image_root, self.strict, self.log, self.stage = image_root, strict, log, stage

    def __call__(self, path: str, args=None):
        """The dataset of `path`; its counts (kept, truncated, dropped, problems) go to the run's log."""
        from dataset import ItemDataset
        from dataset.pretrain_records import PretrainDataset
        cls = PretrainDataset if self.stage == "pretrain" else ItemDataset
        ds = cls(self.image_processor, self.text_processor, args, path, image_root=self.image_root, strict=self.strict)
        self.log(f"[data] {path}: {ds.summary()}")
        return ds


def make_collator(pad_token_id: int):
    from dataset import DataCollator
    return DataCollator(pad_token_id=pad_token_id)


def split_batch(batch: Dict[str, object], device, dtype=None) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """(model kwargs on `device`, labels [B, n]); images cast to `dtype` when given."""
    inputs = {}
    for key in MODEL_KEYS:
        if key in batch and batch[key] is not None:
            value = batch[key].to(device, non_blocking=True)
            if dtype is not None and key in FLOAT_KEYS:
                value = value.to(dtype)
            inputs[key] = value
    return inputs, batch["labels"].to(device, non_blocking=True)
