"""What SAT's training loop calls: the forward step (loss + the work due between optimizer steps),
the evaluation step, and the learning-rate schedule.

SAT's `train()` calls `forward_step(data_iterator, model, args, timers)` once per micro-batch, then
backward and `model.step()`. The first micro-batch of each iteration is where this step does what
must happen between optimizer steps: finish a resume (optimizer state, RNG, data position), save a
checkpoint, measure held-out accuracy, and set the learning rate.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .data import labelled_count, split_labelled

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- loss

def token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None):
    """(sum of next-token cross-entropy over labelled tokens, their count). logits [B, n, V], labels [B, n].

    With per-token `weights` [B, n] (per-stage loss weights) it is (sum of w * cross-entropy, sum of w)
    over the labelled tokens, so that the mean loss is the weighted mean; both go through the same sum,
    so all-ones weights give exactly the two numbers of no weights."""
    shift_logits = logits[:, :-1].float()  # position t predicts token t + 1: [B, n-1, V]
    shift_labels = labels[:, 1:].reshape(-1)  # [B * (n-1)]
    per_token = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels,
                                ignore_index=IGNORE_INDEX, reduction="none")  # [B * (n-1)], 0 where ignored
    labelled = shift_labels != IGNORE_INDEX
    if weights is None:
        return per_token[labelled].sum(), labelled.sum()
    w = weights[:, 1:].reshape(-1).to(per_token.dtype)[labelled]  # the weight of each predicted token
    return (per_token[labelled] * w).sum(), w.sum()


def selected_token_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None):
    """`token_loss` for logits [K, V] computed at the labelled positions only, targets [K]; with the
    targets' weights [K]: (sum of w * cross-entropy, sum of w)."""
    if weights is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum"), torch.tensor(targets.numel())
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")  # [K]
    w = weights.to(per_token.dtype)
    return (per_token * w).sum(), w.sum()


def data_parallel_group():
    from sat import mpu
    return mpu.get_data_parallel_group()


def global_sums(values: List[float], device) -> torch.Tensor:
    """All-reduce (sum) a few numbers over the data-parallel group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, group=data_parallel_group())
    return t


# ----------------------------------------------------------------------------- learning rate

@dataclass(frozen=True)
class Schedule:
    """SAT's AnnealingLR curve (warmup, then linear/cosine/constant decay) without its resume quirks.

    SAT rebuilds its scheduler on resume at max(iteration - 100, 0) with 100 steps at 5% of the peak
    (and ignores its saved state), so a resumed run would not continue the curve; this schedule is a
    pure function of the step, applied before every optimizer step.
    """
    lr: float
    total_iters: int
    warmup: float = 0.0  # fraction of total_iters
    style: str = "cosine"
    decay_ratio: float = 0.1  # cosine ends near lr * decay_ratio

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step `step` (1-based), as SAT's AnnealingLR computes it."""
        warmup_iters = self.warmup * self.total_iters
        if warmup_iters > 0 and step <= warmup_iters:
            return self.lr * step / warmup_iters
        if self.style == "linear":
            return self.lr * (self.total_iters - (step - warmup_iters)) / self.total_iters
        if self.style == "cosine":
            inv = 1.0 / self.decay_ratio
            ratio = min(1.0, (step - warmup_iters) / self.total_iters)
            return self.lr / inv * ((math.cos(math.pi * ratio) + 1) * (inv - 1) / 2 + 1)
        return self.lr  # constant (SAT treats 'exponential' as constant too)


# ----------------------------------------------------------------------------- progress

def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclass
class History:
    """Per-step training loss and lr, validation losses and accuracies; appended to a JSONL file (rank 0)."""
    path: Optional[str] = None
    train: List[dict] = field(default_factory=list)
    valid: List[dict] = field(default_factory=list)
    accuracy: List[dict] = field(default_factory=list)

    other: Dict[str, List[dict]] = field(default_factory=dict)  # further kinds (data_mix, attention, ...)

    def records(self, kind: str) -> List[dict]:
        """The list of one kind of record (train, valid, accuracy, or any other kind added)."""
        return getattr(self, kind) if kind in ("train", "valid", "accuracy") else self.other.setdefault(kind, [])

    def add(self, kind: str, record: dict) -> None:
        self.records(kind).append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"kind": kind, **record}) + "\n")

    def attach(self, path: str, keep_until: Optional[int] = None) -> "History":
        """Append to `path` from now on; first read what it holds (a resumed run), dropping records after
        `keep_until` (a resume from an earlier checkpoint) and rewriting the file."""
        from .train_log import read_records, write_records
        self.path = path
        if keep_until is None or not os.path.isfile(path):
            return self
        records, partial = read_records(path)  # a partial last line (a killed run) is left out
        if partial:
            print(f"[resume] {path}: its last line was cut short (the run was killed while writing it); dropped",
                  flush=True)
        for rec in records:
            if rec["step"] <= keep_until:
                self.records(rec.pop("kind")).append(rec)
        write_records(path, ({"kind": kind, **r} for kind in ("train", "valid", "accuracy", *self.other)
                             for r in self.records(kind)))
        return self


class Progress:
    """One line every `interval` steps: step, loss, lr, samples/s, tokens/s, elapsed, ETA (rank 0).

    Throughput counts only the time between consecutive steps; an interval that held a validation
    pass, a checkpoint or an accuracy run is left out (`pause`).
    """

    def __init__(self, total_iters: int, interval: int, printer=print):
        self.total, self.interval, self.printer = total_iters, max(1, interval), printer
        self.t0 = time.time()
        self.last = None  # start time of the previous step, None after a pause
        self.prev = (0.0, 0.0)  # samples, tokens of the previous step
        self.step_times: List[float] = []  # recent measured step durations
        self.measured = {"time": 0.0, "samples": 0.0, "tokens": 0.0}  # whole run
        self._reset()

    def _reset(self):
        self.window = {"loss": 0.0, "steps": 0, "time": 0.0, "samples": 0.0, "tokens": 0.0}

    def pause(self) -> None:
        self.last = None

    @property
    def samples_per_second(self) -> float:
        return self.measured["samples"] / self.measured["time"] if self.measured["time"] else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.measured["tokens"] / self.measured["time"] if self.measured["time"] else float("nan")

    def step(self, iteration: int, loss: float, lr: float, samples: float, tokens: float) -> Optional[str]:
        now = time.time()
        w = self.window
        if self.last is not None:  # the previous step took now - last
            dt = now - self.last
            self.step_times = (self.step_times + [dt])[-50:]
            for d in (w, self.measured):
                d["time"] += dt
                d["samples"] += self.prev[0]
                d["tokens"] += self.prev[1]
        self.last, self.prev = now, (samples, tokens)
        w["loss"] += loss
        w["steps"] += 1
        if iteration % self.interval and iteration != self.total:
            return None
        per_step = sorted(self.step_times)[len(self.step_times) // 2] if self.step_times else float("nan")
        sps = w["samples"] / w["time"] if w["time"] else self.samples_per_second
        tps = w["tokens"] / w["time"] if w["time"] else float("nan")
        eta = _fmt_time(per_step * (self.total - iteration)) if per_step == per_step else "?"
        line = (f"[train] step {iteration:>6d}/{self.total} | loss {w['loss'] / w['steps']:.4f} | lr {lr:.3e} | "
                f"{sps:6.1f} samples/s | {tps:7.0f} tok/s | elapsed {_fmt_time(now - self.t0)} | ETA {eta}")
        self._reset()
        self.printer(line)
        return line


# ----------------------------------------------------------------------------- the steps

@dataclass
class BetweenSteps:
    """Work at the start of an iteration, each a callable(engine, iteration) -> None (may be None)."""
    resume: Optional[Callable] = None  # once, at the first iteration; returns micro-batches to skip
    save: Optional[Callable] = None
    save_interval: int = 0
    accuracy: Optional[Callable] = None
    accuracy_interval: int = 0


class TrainStep:
    """SAT's forward_step for training: loss normalised by the labelled tokens of the whole optimizer
    step, over every rank and accumulated micro-batch (so N processes x B samples, K micro-batches x B
    samples and 1 process x N*K*B samples give the same gradient)."""

    def __init__(self, history: History, between: BetweenSteps, dtype=None, is_rank0: bool = True,
                 schedule: Optional[Schedule] = None, progress: Optional[Progress] = None):
        self.history, self.between, self.dtype, self.is_rank0 = history, between, dtype, is_rank0
        self.schedule, self.progress = schedule, progress  # set once the number of steps is known
        self.start_iteration: Optional[int] = None
        self.current: Optional[int] = None  # iteration whose micro-batches are running
        self.valid = ValidationAccumulator()
        self.micro = [0.0, 0.0, 0.0, 0.0]  # this iteration's micro-batches: mean losses, count, tokens, samples
        self.pending: List[dict] = []  # this iteration's micro-batches not yet run
        self.accumulation, self.step_count = 1, 1.0  # micro-batches per step; labelled tokens of the step

    def _fetch_iteration(self, data_iterator, engine) -> None:
        """Read all micro-batches of the optimizer step and count their labelled tokens over all ranks, so
        that every micro-batch's loss is normalised by the whole accumulated batch."""
        self.accumulation = int(engine.gradient_accumulation_steps()) if hasattr(engine, "gradient_accumulation_steps") else 1
        self.pending = [next(data_iterator) for _ in range(self.accumulation)]
        local = sum(labelled_count(b) for b in self.pending)
        device = next(engine.parameters()).device
        self.step_count = max(global_sums([local], device).tolist()[0], 1e-12)

    def __call__(self, data_iterator, model, args, timers):
        iteration = args.iteration  # SAT increments it after the step: this step is iteration + 1
        if iteration != self.current:
            self._between_steps(model, args, iteration, data_iterator)
            self.current = iteration
            timers("batch generator").start()
            self._fetch_iteration(data_iterator, model)
            timers("batch generator").stop()
        batch = self.pending.pop(0)
        inputs, targets, weights = split_labelled(batch, next(model.parameters()).device, self.dtype)
        logits = model(**inputs)[0]  # [K, V]: the labelled positions only
        loss_sum, count = selected_token_loss(logits, targets, weights)  # weights: per-stage, when the run has them
        world = torch.distributed.get_world_size(group=data_parallel_group()) if torch.distributed.is_initialized() else 1
        samples = batch["samples_per_row"].sum() if "samples_per_row" in batch else batch["labels"].shape[0]
        totals = global_sums([loss_sum.item(), float(batch["lengths"].sum()), float(samples)], logits.device).tolist()
        # DeepSpeed averages gradients over the data-parallel ranks and divides each micro-batch's loss by
        # the accumulation steps: scale so that the optimizer sees the gradient of (sum over every labelled
        # token of all ranks and micro-batches of this step) / (their count).
        loss = loss_sum * (world * self.accumulation / self.step_count)
        totals = [totals[0] / self.step_count * self.accumulation, 1.0, totals[1], totals[2]]
        self.micro = [a + b for a, b in zip(self.micro, totals)]
        if model.is_gradient_accumulation_boundary():
            mean_loss, micro_batches, tokens, samples = self.micro
            self.micro = [0.0, 0.0, 0.0, 0.0]
            if self.is_rank0:
                step, lr = iteration + 1, self.schedule(iteration + 1)
                self.history.add("train", {"step": step, "loss": mean_loss / micro_batches, "lr": lr,
                                           "time": time.time()})
                if self.progress is not None:
                    self.progress.step(step, mean_loss / micro_batches, lr, samples, tokens)
        return loss, {}

    def finish(self, iteration: int) -> None:
        """After the loop: record a validation pass that SAT ran after the last step."""
        if self.valid.pending():
            loss = self.valid.flush()
            if self.is_rank0:
                self.history.add("valid", {"step": iteration, "loss": loss})

    def _between_steps(self, engine, args, iteration: int, data_iterator) -> None:
        b = self.between
        paused = False
        if self.start_iteration is None:
            self.start_iteration = iteration
            if b.resume is not None:
                # SAT's single-process loader cannot start mid-stream: read past the batches the
                # checkpointed run already consumed, so the data order continues exactly.
                for _ in range(b.resume(engine, iteration)):
                    next(data_iterator)
                paused = True
        if self.valid.pending():  # SAT evaluated validation loss after the previous step
            loss = self.valid.flush()
            if self.is_rank0:
                self.history.add("valid", {"step": iteration, "loss": loss})
            paused = True
        if iteration > self.start_iteration:
            if b.save is not None and b.save_interval and iteration % b.save_interval == 0:
                b.save(engine, iteration)
                paused = True
            if b.accuracy is not None and b.accuracy_interval and iteration % b.accuracy_interval == 0:
                b.accuracy(engine, iteration)
                paused = True
        lr = self.schedule(iteration + 1)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        if paused and self.progress is not None:
            self.progress.pause()


class ValidationAccumulator:
    """Sums of validation loss/tokens over one SAT evaluation pass (global over the ranks)."""

    def __init__(self):
        self.loss_sum, self.count = 0.0, 0.0

    def add(self, loss_sum: float, count: float) -> None:
        self.loss_sum += loss_sum
        self.count += count

    def pending(self) -> bool:
        return self.count > 0

    def flush(self) -> float:
        loss = self.loss_sum / self.count
        self.loss_sum, self.count = 0.0, 0.0
        return loss


class EvalStep:
    """SAT's forward_step_eval: the validation loss of one batch, as the mean over the labelled tokens
    of all ranks' batches (the same number on every rank)."""

    def __init__(self, train_step: TrainStep, dtype=None):
        self.train_step, self.dtype = train_step, dtype

    def __call__(self, data_iterator, model, args, timers):
        batch = next(data_iterator)
        inputs, targets, _ = split_labelled(batch, next(model.parameters()).device, self.dtype)
        logits = model(**inputs)[0]  # [K, V]
        loss_sum, count = selected_token_loss(logits, targets)  # validation loss: unweighted
        totals = global_sums([loss_sum.item(), count.item()], logits.device)
        self.train_step.valid.add(totals[0].item(), totals[1].item())
        return (totals[0] / totals[1].clamp(min=1)).float(), {}
