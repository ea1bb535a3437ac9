"""Weighted mixing of pretraining sources: `--data-mix captions.jsonl:0.6,docs/{000..015}.tar:0.3,text.jsonl:0.1`.

Each source is a stream for this data-parallel rank and loader worker (`MapStream` over an in-memory
data set, `dataset.shards.ShardStream` over tar shards). `DataMix` draws the source of every sample
from a generator seeded by (seed, consumer), so a run's order is fixed by its seed, and `start`
continues a stream after the samples already consumed without reading them.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from .shards import _stream_base, consumer_info


@dataclass(frozen=True)
class MixSource:
    spec: str     # a record file or a shard pattern
    weight: float


def parse_data_mix(text: str) -> List[MixSource]:
    """`a.jsonl:0.6,b/{0..3}.tar:0.4` -> sources with weights normalised to sum 1; ValueError says what is wrong.

    Commas inside braces belong to the pattern; the weight follows the last ':' of an entry."""
    entries, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            entries.append(cur)
            cur = ""
        else:
            cur += ch
    entries.append(cur)
    sources = []
    for entry in entries:
        entry = entry.strip()
        m = re.fullmatch(r"(.+):([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", entry)
        if not m:
            raise ValueError(f"--data-mix entry {entry!r}: expected SOURCE:WEIGHT (e.g. captions.jsonl:0.6)")
        weight = float(m.group(2))
        if weight <= 0:
            raise ValueError(f"--data-mix entry {entry!r}: the weight must be > 0")
        sources.append(MixSource(m.group(1), weight))
    total = sum(s.weight for s in sources)
    return [MixSource(s.spec, s.weight / total) for s in sources]


class MapStream(_stream_base()):
    """An indexable data set as an endless stream for one consumer: each epoch a permutation seeded by
    (seed, epoch), the same on every consumer, of which consumer c of C takes positions c, c+C, ...
    `start` skips that many of this consumer's samples by index arithmetic (nothing is read)."""

    def __init__(self, dataset, seed: int = 0, start: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        super().__init__()
        if len(dataset) == 0:
            raise ValueError("MapStream over an empty data set")
        self.dataset, self.seed, self.start = dataset, seed, start
        self.rank, self.world_size = rank, world_size
        self.consumer: Optional[Tuple[int, int]] = None  # (index, count) set by a DataMix, else from the process

    def indices(self, consumer: int, consumers: int) -> Iterator[int]:
        """The data set indices this consumer reads, in order, from its `start`-th on."""
        n = len(self.dataset)
        first = consumer % n  # with fewer samples than consumers, some consumers share samples
        epoch, offset = divmod(self.start, len(range(first, n, consumers)))
        while True:
            order = list(range(n))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            for i in order[first::consumers][offset:]:
                yield i
            epoch, offset = epoch + 1, 0

    def __iter__(self):
        consumer, consumers = self.consumer or consumer_info(self.rank, self.world_size)
        for i in self.indices(consumer, consumers):
            yield self.dataset[i]


class DataMix(_stream_base()):
    """Samples drawn from `streams` with probabilities `weights`; each sample dict gets `source` (its
    source's index). The draw sequence is seeded by (seed, consumer). `start` = samples of this consumer
    already consumed: the draws are replayed (cheap) and each source resumes after its own count.
    `skip_batches` = loader batches (of `batch_size`) already trained on by this rank: a DataLoader takes
    batch j from worker j mod W, so each worker adds its own share of them to `start` (a resumed run)."""

    def __init__(self, streams: Sequence, weights: Sequence[float], names: Sequence[str], seed: int = 0,
                 start: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None,
                 skip_batches: int = 0, batch_size: int = 1):
        super().__init__()
        self.skip_batches, self.batch_size = skip_batches, batch_size
        if not (len(streams) == len(weights) == len(names)) or not streams:
            raise ValueError("DataMix needs one weight and one name per stream")
        self.streams, self.names, self.seed, self.start = list(streams), list(names), seed, start
        total = float(sum(weights))
        self.weights = [w / total for w in weights]
        self.rank, self.world_size = rank, world_size

    def draws(self, consumer: int) -> Iterator[int]:
        """The endless source-index sequence of one consumer."""
        rng = random.Random(f"mix:{self.seed}:{consumer}")
        cumulative, acc = [], 0.0
        for w in self.weights:
            acc += w
            cumulative.append(acc)
        while True:
            u = rng.random()
            yield next((k for k, c in enumerate(cumulative) if u < c), len(cumulative) - 1)

    def position(self) -> Tuple[int, int, int]:
        """(consumer index, consumers) and the loader batches this consumer already produced.

        A DataLoader takes batch j from worker j mod W, also after a restart, so after `skip_batches`
        batches worker w must continue the sequence of worker (w + skip_batches) mod W."""
        import torch
        worker = torch.utils.data.get_worker_info()
        w, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        consumer, consumers = consumer_info(self.rank, self.world_size)
        rank = consumer // workers
        acting = (w + self.skip_batches) % workers
        return rank * workers + acting, consumers, len(range(acting, self.skip_batches, workers))

    def resume_counts(self, consumer: int, start: int) -> List[int]:
        """How many of the first `start` samples each source supplied."""
        counts = [0] * len(self.streams)
        draws = self.draws(consumer)
        for _ in range(start):
            counts[next(draws)] += 1
        return counts

    def __iter__(self):
        consumer, consumers, done_batches = self.position()
        start = self.start + done_batches * self.batch_size
        for stream in self.streams:
            if hasattr(stream, "consumer"):  # this process's copy: read as the consumer the position says
                stream.consumer = (consumer, consumers)
        counts = self.resume_counts(consumer, start)
        iterators = [_started(s, c) for s, c in zip(self.streams, counts)]
        draws = self.draws(consumer)
        for _ in range(start):
            next(draws)
        for k in draws:
            sample = next(iterators[k])
            if isinstance(sample, dict):
                sample = dict(sample, source=k)
            yield sample


def _started(stream, skip: int) -> Iterator:
    """Iterate `stream` from its `skip`-th sample: index arithmetic when it supports `start`, else by reading."""
    if skip and hasattr(stream, "start"):
        stream.start = skip
        return iter(stream)
    it = iter(stream)
    for _ in range(skip):
        next(it)
    return it


def mix_summary(sources: Sequence[MixSource], sizes: Sequence[Optional[int]]) -> str:
    """The mix as printed at the start: one line per source with its weight and size."""
    lines = ["[data-mix] sources (weight, samples):"]
    for s, n in zip(sources, sizes):
        lines.append(f"  {s.weight:6.1%}  {s.spec}  ({'streamed' if n is None else f'{n} samples'})")
    return "\n".join(lines)
