"""Modality counts of the training data as it is consumed, per source of a data mix and overall:
samples, image tokens, text tokens, trained tokens, so a user can balance modalities from measured
numbers. Printed and written to train_log.jsonl (kind `data_mix`) every --log-interval steps."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

FIELDS = ("samples", "image_tokens", "text_tokens", "trained_tokens")
IGNORE_INDEX = -100


def batch_counts(batch: dict, n_sources: int) -> torch.Tensor:
    """[n_sources, 4] float64 counts (FIELDS order) of one collated batch; `source` says each sample's source."""
    lengths = batch["lengths"].double()  # [B] real tokens per row (no padding)
    image = batch["image_embed_mask"].double().sum(1)  # [B] BOI..EOI tokens
    trained = (batch["labels"] != IGNORE_INDEX).double().sum(1)  # [B]
    # a packed row holds several samples, numbered by segment id 1..k (an unpacked row is segment 1)
    samples = batch["segment_ids"].amax(1).double() if "segment_ids" in batch else torch.ones_like(lengths)
    per_sample = torch.stack([samples, image, lengths - image, trained], dim=1)  # [B, 4]
    sources = torch.as_tensor([int(s) for s in batch.get("source") or [0] * len(lengths)], dtype=torch.long)
    out = torch.zeros(n_sources, len(FIELDS), dtype=torch.float64)
    out.index_add_(0, sources, per_sample)
    return out


def summarise(counts: torch.Tensor, names: Sequence[str]) -> dict:
    """{"sources": {name: fields + ratios}, "overall": ...} from [n_sources, 4] counts."""
    def one(row: torch.Tensor, total_samples: float) -> dict:
        samples, image, text, trained = (float(v) for v in row)
        tokens = image + text
        return {"samples": int(samples), "share": round(samples / total_samples, 4) if total_samples else 0.0,
                "image_tokens": int(image), "text_tokens": int(text), "trained_tokens": int(trained),
                "image_to_text": round(image / text, 4) if text else None,
                "trained_fraction": round(trained / tokens, 4) if tokens else None}
    total = counts.sum(0)
    return {"sources": {name: one(counts[k], float(total[0])) for k, name in enumerate(names)},
            "overall": one(total, float(total[0]))}


def format_summary(step: int, summary: dict) -> str:
    """The printed table: one row per source, then overall."""
    head = (f"[data] step {step}: {'source':<40} {'samples':>8} {'share':>6} {'image tok':>10} {'text tok':>9} "
            f"{'trained':>8} {'img/text':>8} {'trained/all':>11}")
    rows = [head]
    for name, r in list(summary["sources"].items()) + [("overall", summary["overall"])]:
        short = name if len(name) <= 40 else "..." + name[-37:]
        ratio = "-" if r["image_to_text"] is None else f"{r['image_to_text']:.3f}"
        frac = "-" if r["trained_fraction"] is None else f"{r['trained_fraction']:.3f}"
        rows.append(f"[data] {' ' * len(str(step))}       {short:<40} {r['samples']:>8} {r['share']:>6.1%} "
                    f"{r['image_tokens']:>10} {r['text_tokens']:>9} {r['trained_tokens']:>8} {ratio:>8} {frac:>11}")
    return "\n".join(rows)


class TokenReport:
    """Counts every training batch; every `interval` steps (and at the last) sums over the data-parallel
    ranks (`reduce`, called on every rank), prints the table and adds a `data_mix` record (rank 0)."""

    def __init__(self, names: Sequence[str], interval: int, total_steps: int, reduce: Callable,
                 printer: Callable = print, history=None, is_rank0: bool = True):
        self.names, self.interval, self.total = list(names), max(1, interval), total_steps
        self.reduce, self.printer, self.history, self.is_rank0 = reduce, printer, history, is_rank0
        self.counts = torch.zeros(len(self.names), len(FIELDS), dtype=torch.float64)  # this rank, since start
        self.last: Optional[dict] = None

    def observe(self, batch: dict) -> None:
        self.counts += batch_counts(batch, len(self.names))

    def end_step(self, step: int) -> Optional[dict]:
        if step % self.interval and step != self.total:
            return None
        total = self.reduce(self.counts.flatten().tolist()).cpu().view(len(self.names), len(FIELDS))
        self.last = summarise(total, self.names)
        if self.is_rank0:
            self.printer(format_summary(step, self.last))
            if self.history is not None:
                self.history.add("data_mix", {"step": step, **self.last})
        return self.last


class _CountingIterator:
    """The data iterator seen by the train step: batches read while `counting()` are observed."""

    def __init__(self, inner, report: TokenReport, counting: Callable[[], bool]):
        self.inner, self.report, self.counting = inner, report, counting

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        if self.counting():
            self.report.observe(batch)
        return batch


class CountingStep:
    """SAT forward step wrapper: the train step's batches are counted (not those a resume reads past),
    and the report is due after each optimizer step."""

    def __init__(self, step, report: Optional[TokenReport] = None):
        self.step, self.report = step, report  # the report may be set later (once the sources are known)

    def __call__(self, data_iterator, model, args, timers):
        if self.report is None:
            return self.step(data_iterator, model, args, timers)
        iteration = args.iteration
        counting = lambda: self.step.current == iteration  # set once the between-steps work (resume skip) is done
        out = self.step(_CountingIterator(data_iterator, self.report, counting), model, args, timers)
        if model.is_gradient_accumulation_boundary():
            self.report.end_step(iteration + 1)
        return out
