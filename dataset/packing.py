"""Packing: whole samples placed into rows of `max_length` tokens, so a batch holds (almost) no padding.

Rows are planned from the samples' token lengths alone: the indices are shuffled with a seed, cut into
buffers, and each buffer is placed first-fit-decreasing (longest first, into the first row with room).
No sample is split; a sample never exceeds max_length because the text processor has already cut or
dropped it (the truncation rules). The collator then concatenates a row's samples: each keeps its own
position ids (they restart at 0), image spans, masks and labels, and its segment id (1, 2, ...), from
which the model builds block-diagonal causal attention.
"""
from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence

from torch.utils.data import Dataset

DEFAULT_BUFFER = 4096  # samples planned together (bigger: rows fill better, planning costs more memory)


def first_fit_decreasing(lengths: Sequence[int], indices: Sequence[int], capacity: int) -> List[List[int]]:
    """Rows (lists of `indices`) of total length <= capacity: longest first, each into the first row
    with room (ties keep the given order, so the result is a pure function of the inputs)."""
    order = sorted(indices, key=lambda i: -lengths[i])  # stable: equal lengths keep the shuffled order
    rows: List[List[int]] = []
    room: List[int] = []
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"sample {i} has {need} tokens, more than a row of {capacity}; the text processor "
                             f"must cut or drop it first (max_length)")
        for r, free in enumerate(room):
            if need <= free:
                rows[r].append(i)
                room[r] -= need
                break
        else:
            rows.append([i])
            room.append(capacity - need)
    return rows


def plan_rows(lengths: Sequence[int], capacity: int, seed: int, buffer_size: int = DEFAULT_BUFFER) -> List[List[int]]:
    """The rows of one epoch: shuffle with `seed`, then first-fit-decreasing per buffer of samples."""
    indices = list(range(len(lengths)))
    random.Random(seed).shuffle(indices)
    rows: List[List[int]] = []
    for start in range(0, len(indices), max(1, buffer_size)):
        rows += first_fit_decreasing(lengths, indices[start:start + buffer_size], capacity)
    random.Random(seed + 1).shuffle(rows)  # long rows would otherwise all come first in each buffer
    return rows


def sample_lengths(dataset, progress: bool = False) -> List[int]:
    """Token length of every sample. For an ItemDataset only its text is encoded (no image is read)."""
    encode = getattr(getattr(dataset, "text_processor", None), "encode", None)
    records = getattr(dataset, "data", None)
    items = range(len(dataset))
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="packing: lengths", leave=False)
    length_of = getattr(dataset, "token_length", None)  # a dataset that knows its lengths (PretrainDataset)
    if length_of is not None:
        return [length_of(i) for i in items]
    if encode is not None and records is not None and len(records) == len(dataset):
        return [len(encode(records[i].turns, records[i].problem(""))) for i in items]
    return [len(dataset[i]["input_ids"]) for i in items]


class PackedDataset(Dataset):
    """Rows of `dataset`'s samples, each row a list of samples of total length <= max_length.

    `PackedDataset(dataset, max_length, seed)`; `rows` holds the plan (sample indices per row),
    `waste()` the share of a row's tokens left as padding. Collate with `DataCollator` (it packs a
    list-of-samples item into one row).
    """

    def __init__(self, dataset, max_length: int, seed: int = 0, buffer_size: int = DEFAULT_BUFFER,
                 lengths: Optional[Sequence[int]] = None, progress: bool = False):
        self.dataset, self.max_length = dataset, max_length
        self.lengths = list(lengths) if lengths is not None else sample_lengths(dataset, progress=progress)
        if len(self.lengths) != len(dataset):
            raise ValueError(f"{len(self.lengths)} lengths for {len(dataset)} samples")
        self.rows = plan_rows(self.lengths, max_length, seed, buffer_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> List[dict]:
        return [self.dataset[i] for i in self.rows[index]]

    def waste(self) -> float:
        """Padding share if every row is padded to max_length (the collator pads to the longest row)."""
        used = sum(self.lengths)
        return 1.0 - used / (len(self.rows) * self.max_length) if self.rows else 0.0


def packed_factory(make_dataset: Callable, max_length: int, seed: int, log=print) -> Callable:
    """Wrap a `(path, args) -> dataset` factory so that each data set comes back packed into rows."""
    def make(path, args=None):
        ds = make_dataset(path, args)
        if not hasattr(ds, "__len__"):
            raise ValueError(f"--packing: {path} is streamed (no length); packing plans rows over a data set "
                             f"that can be indexed (a JSON/JSONL file)")
        packed = PackedDataset(ds, max_length, seed=seed)
        log(f"[packing] {path}: {len(ds)} samples in {len(packed)} rows of {max_length} tokens "
            f"({100 * packed.waste():.1f}% padding at full rows)")
        return packed
    return make
