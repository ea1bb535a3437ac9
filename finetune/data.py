"""The dataset factory and collator handed to SAT's `training_main`, and the split of a batch into
model inputs and training-only fields."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

IGNORE_INDEX = -100  # the label of untrained positions (dataset.text_processor's value)

# What CogVLMModel.forward takes from a collated batch; the rest (labels, lengths, ids) is bookkeeping.
MODEL_KEYS = ("input_ids", "position_ids", "attention_mask", "image_embed_mask", "vision_expert_mask",
              "vision_image", "vision_input_ids", "vision_attention_mask", "attention_segments")
FLOAT_KEYS = ("vision_image",)  # cast to the run's dtype (bf16/fp16) before the forward


class DatasetFactory:
    """`create_dataset_function(path, args)` for SAT: one `dataset.ItemDataset` per data file
    (`PretrainDataset` with stage "pretrain")."""

    def __init__(self, tokenizer, image_size, image_length: int, max_length: int, template: str,
                 image_root=None, strict: bool = False, truncation: str = "cut", log=print, stage: str = "sft",
                 stage_weights=None, streaming: bool = False, seed: int = 0, shuffle_buffer: int = 1000,
                 resume_batches: int = 0):
        from dataset import ImageProcessor, TextProcessor
        self.image_processor = ImageProcessor(image_size)
        self.text_processor = TextProcessor(tokenizer, max_length=max_length, image_length=image_length,
                                            template=template, truncation=truncation, stage_weights=stage_weights)
        self.image_root, self.strict, self.log, self.stage = image_root, strict, log, stage
        self.streaming, self.seed, self.shuffle_buffer = streaming, seed, shuffle_buffer
        self.resume_batches = resume_batches  # a resumed stream starts after the batches already trained on
        self.train_sources = None  # names of the training stream's sources (per-source token report)
        self.train_datasets = []  # what SAT asked for as training data (the attention monitor's probe)

    def __call__(self, path: str, args=None):
        """The dataset of `path`; its counts (kept, truncated, dropped, problems) go to the run's log.
        Streaming (tar shards or a data mix, training data only): a stream for this rank and worker."""
        is_train = args is not None and path in (args.train_data or [])
        ds = self.stream(path, args) if self.streaming and is_train else self.records(path, args)
        if is_train:
            self.train_datasets.append(ds)
        return ds

    def stream(self, spec: str, args):
        """A tar shard pattern, a record file or a `--data-mix` spec as one `DataMix` stream."""
        from dataset.data_mix import DataMix, MapStream, mix_summary, parse_data_mix
        from dataset.pretrain_records import SampleEncoder
        from dataset.shards import ShardStream, is_shard_source
        try:
            sources = parse_data_mix(spec)
        except ValueError:  # one plain source (a file or a shard pattern), not a SOURCE:WEIGHT list
            sources = parse_data_mix(spec + ":1")
        encoder = SampleEncoder(self.image_processor, self.text_processor)
        streams, sizes = [], []
        for source in sources:
            if is_shard_source(source.spec):
                streams.append(ShardStream(source.spec, encoder, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                           strict=self.strict))
                sizes.append(None)
            else:
                ds = self.records(source.spec, args)
                streams.append(MapStream(ds, seed=self.seed))
                sizes.append(len(ds))
        self.train_sources = [s.spec for s in sources]
        self.log(mix_summary(sources, sizes))
        return DataMix(streams, [s.weight for s in sources], self.train_sources, seed=self.seed,
                       skip_batches=self.resume_batches, batch_size=args.batch_size)

    def records(self, path: str, args=None):
        from dataset import ItemDataset
        from dataset.pretrain_records import PretrainDataset
        cls = PretrainDataset if self.stage == "pretrain" else ItemDataset
        ds = cls(self.image_processor, self.text_processor, args, path, image_root=self.image_root, strict=self.strict)
        self.log(f"[data] {path}: {ds.summary()}")
        return ds


def make_collator(pad_token_id: int):
    from dataset import DataCollator
    return DataCollator(pad_token_id=pad_token_id)


def next_token_values(per_token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """per_token [B, n] -> [K]: at each flat position t (into B * n), the value of token t + 1."""
    shifted = torch.zeros_like(per_token)
    shifted[:, :-1] = per_token[:, 1:]  # [B, n]
    return shifted.reshape(-1).index_select(0, positions)


def labelled_positions(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(flat indices into B * n of the positions that predict a labelled token, their targets [K]).

    Position t predicts token t + 1; found on the host before the batch moves, so no device sync.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]  # [B, n]: the target of each position
    flat = shifted.reshape(-1)
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # [K]
    return positions, flat.index_select(0, positions)


def labelled_count(batch: Dict[str, object]) -> float:
    """The loss normaliser of a batch: its labelled next-token targets, or their loss weights' sum."""
    positions, _ = labelled_positions(batch["labels"])
    weights = batch.get("loss_weights")
    return float(len(positions)) if weights is None else float(next_token_values(weights, positions).sum())


def split_labelled(batch: Dict[str, object], device, dtype=None):
    """(model kwargs with `logit_positions`, targets [K], their loss weights [K] or None), on `device`:
    the model computes the LM head only where a label is predicted."""
    inputs, _ = split_batch(batch, device, dtype, labels=False)
    positions, targets = labelled_positions(batch["labels"])
    weights = batch.get("loss_weights")
    if weights is not None:
        weights = next_token_values(weights, positions).to(device, non_blocking=True)
    inputs["logit_positions"] = positions.to(device, non_blocking=True)
    return inputs, targets.to(device, non_blocking=True), weights


def split_batch(batch: Dict[str, object], device, dtype=None,
                labelled_only: bool = False, labels: bool = True) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """(model kwargs on `device`, labels [B, n]); images cast to `dtype` when given.

    labelled_only: the model computes logits only where a label is predicted (`logit_positions`) and
    the second value is those targets [K] instead of the labels (see `split_labelled`).
    """
    inputs = {}
    for key in MODEL_KEYS:
        if key in batch and batch[key] is not None:
            value = batch[key].to(device, non_blocking=True)
            if dtype is not None and key in FLOAT_KEYS:
                value = value.to(dtype)
            inputs[key] = value
    if labelled_only:
        positions, targets = labelled_positions(batch["labels"])
        inputs["logit_positions"] = positions.to(device, non_blocking=True)
        return inputs, targets.to(device, non_blocking=True)
    return inputs, batch["labels"].to(device, non_blocking=True) if labels else None
