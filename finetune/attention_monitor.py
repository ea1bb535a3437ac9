"""Cross-modal attention monitor (`--attention-monitor-interval N`): every N steps, on a fixed probe
batch, the share of attention mass that text tokens put on image tokens, per layer (averaged over
heads and over the text tokens that have an image before them). Written to TensorBoard
(`attention/text_to_image/layer_K`), to train_log.jsonl (kind `attention`, key
`text_to_image_attention`) and, at the end, as a layers x steps heatmap PNG.

The probe is a SAT mixin whose `attention_fn` wraps the model's own (non-conflict hook): it is added
for the probe forward only, so ordinary training steps run exactly as without the monitor.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from sat.model.base_model import BaseMixin, non_conflict

PROBE_NAME = "attention_probe"
PROBE_SAMPLES = 4  # samples in the probe batch (those with images first)


def text_to_image_share(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], causal: bool,
                        text_queries: torch.Tensor, image_keys: torch.Tensor,
                        segments: Optional[torch.Tensor] = None):
    """(sum over text queries of their head-averaged attention mass on image keys, number of such queries).

    q, k [b, h, n, d] (after rotary); mask broadcastable to [b, 1, n, n] (>0 = may attend) or None;
    text_queries, image_keys [b, n] bool; segments [b, n] (packed rows: a token sees its own sample
    only, whatever the mask says). Queries that see no image key are left out.
    """
    b, h, n, d = q.shape
    total, count = 0.0, 0
    allowed_all = None
    if mask is not None and mask.dim() >= 2 and mask.shape[-1] == n and mask.shape[-2] == n:
        allowed_all = (mask > 0) if mask.dtype != torch.bool else mask
        allowed_all = allowed_all.expand(b, 1, n, n)[:, 0]  # [b, n, n]
    causal_mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    for row in range(b):
        allowed = causal_mask if allowed_all is None else allowed_all[row]
        if causal and allowed_all is not None:
            allowed = allowed & causal_mask
        if segments is not None:
            allowed = allowed & (segments[row][:, None] == segments[row][None, :])
        sees_image = (allowed & image_keys[row][None, :]).any(-1)  # [n]
        rows = torch.nonzero(text_queries[row] & sees_image).flatten()
        if rows.numel() == 0:
            continue
        scores = q[row][:, rows].float() @ k[row].float().transpose(-1, -2) / math.sqrt(d)  # [h, t, n]
        scores = scores.masked_fill(~allowed[rows][None], float("-inf"))
        probs = scores.softmax(-1)  # [h, t, n]
        mass = probs[..., image_keys[row]].sum(-1).mean(0)  # [h, t] -> [t], averaged over heads
        total += float(mass.sum())
        count += int(rows.numel())
    return total, count


class AttentionProbeMixin(BaseMixin):
    """Wraps `attention_fn`: records each layer's text-to-image share, then attends as the model does."""

    def __init__(self, text_queries: torch.Tensor, image_keys: torch.Tensor, segments: Optional[torch.Tensor] = None):
        super().__init__()
        self.text_queries, self.image_keys, self.segments = text_queries, image_keys, segments
        self.per_layer: Dict[int, tuple] = {}

    @non_conflict
    def attention_fn(self, q, k, v, mask, dropout_fn, old_impl=None, **kw_args):
        layer = int(kw_args["layer_id"])
        self.per_layer[layer] = text_to_image_share(q, k, mask, bool(kw_args.get("attention_is_causal")),
                                                    self.text_queries, self.image_keys, self.segments)
        return old_impl(q, k, v, mask, dropout_fn, **kw_args)


def probe_masks(batch: dict):
    """(text query mask, image key mask) [B, n] bool of a collated batch: text = real non-image tokens."""
    image = batch["image_embed_mask"].bool()
    real = batch["segment_ids"] > 0 if "segment_ids" in batch else torch.ones_like(image)
    return real & ~image, image


@torch.no_grad()
def measure(model, batch: dict, split_batch: Callable, dtype=None) -> List[Optional[float]]:
    """Per-layer text-to-image attention shares of `batch` (None for a layer with no text token seeing an
    image). `model` is the SAT model (or a DeepSpeed engine around it); eval mode for the probe."""
    sat_model = getattr(model, "module", model)
    device = next(sat_model.parameters()).device
    inputs, _ = split_batch(batch, device, dtype)
    text_queries, image_keys = (m.to(device) for m in probe_masks(batch))
    segments = batch["segment_ids"].to(device) if "segment_ids" in batch else None
    probe = AttentionProbeMixin(text_queries, image_keys, segments)
    was_training = sat_model.training
    sat_model.add_mixin(PROBE_NAME, probe)
    try:
        sat_model.eval()
        sat_model(**inputs)
    finally:
        sat_model.del_mixin(PROBE_NAME)
        sat_model.train(was_training)
    layers = len(sat_model.transformer.layers)
    return [(probe.per_layer[i][0] / probe.per_layer[i][1]) if probe.per_layer.get(i, (0, 0))[1] else None
            for i in range(layers)]


def choose_probe_samples(samples, n: int = PROBE_SAMPLES) -> list:
    """Up to n samples for the probe, those with images first (a text-only probe measures nothing)."""
    samples = list(samples)
    with_images = [s for s in samples if s.get("num_images", 0)]
    return (with_images + [s for s in samples if not s.get("num_images", 0)])[:n]


def probe_batch(dataset, collate: Callable, scan: int = 64, n: int = PROBE_SAMPLES) -> dict:
    """The fixed probe batch: up to n of the first `scan` samples of the training data, images first."""
    import itertools
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        samples = [dataset[i] for i in range(min(scan, len(dataset)))]
    else:  # a stream: its first samples (for this process)
        samples = list(itertools.islice(iter(dataset), scan))
    return collate(choose_probe_samples(samples, n))


class AttentionMonitor:
    """Measures the probe batch every `interval` steps (`due`/`run`), logs it, and plots the heatmap."""

    def __init__(self, probe_batch: dict, interval: int, split_batch: Callable, dtype=None, history=None,
                 writer=None, printer: Callable = print, is_rank0: bool = True):
        self.batch, self.interval, self.split_batch, self.dtype = probe_batch, interval, split_batch, dtype
        self.history, self.writer, self.printer, self.is_rank0 = history, writer, printer, is_rank0
        self.steps: List[int] = []
        self.shares: List[List[Optional[float]]] = []

    def due(self, step: int) -> bool:
        return self.interval > 0 and step % self.interval == 0 and step not in self.steps

    def run(self, model, step: int) -> List[Optional[float]]:
        """Measure now (every rank runs the forward: ZeRO-3 gathers weights collectively); rank 0 logs."""
        shares = measure(model, self.batch, self.split_batch, self.dtype)
        self.steps.append(step)
        self.shares.append(shares)
        if self.is_rank0:
            shown = " ".join("-" if s is None else f"{s:.3f}" for s in shares)
            self.printer(f"[attention] step {step}: text->image attention share per layer: {shown}")
            if self.history is not None:
                self.history.add("attention", {"step": step, "text_to_image_attention": shares})
            if self.writer is not None:
                for layer, share in enumerate(shares):
                    if share is not None:
                        self.writer.add_scalar(f"attention/text_to_image/layer_{layer}", share, step)
                self.writer.flush()
        return shares

    def plot(self, path) -> Optional[Path]:
        """Heatmap: layers (rows) x measured steps (columns), colour = text-to-image share."""
        if not self.shares:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        grid = torch.tensor([[float("nan") if s is None else s for s in col] for col in self.shares]).T  # [layers, steps]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(self.steps) + 2), max(3.0, 0.3 * grid.shape[0] + 1.5)),
                               dpi=100)
        im = ax.imshow(grid.numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0.0)
        ticks = list(range(len(self.steps)))
        stride = max(1, len(ticks) // 12)
        ax.set_xticks(ticks[::stride])
        ax.set_xticklabels([str(self.steps[i]) for i in ticks[::stride]])
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        ax.set_title("share of text-token attention on image tokens", fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path


class MonitoredStep:
    """SAT forward step wrapper: before the first micro-batch of a step that is due (and before the
    first step: the baseline), the monitor measures the probe batch; other steps pass straight through."""

    def __init__(self, step, monitor: Optional[AttentionMonitor] = None):
        self.step, self.monitor = step, monitor  # the monitor is set once the probe batch exists

    def __call__(self, data_iterator, model, args, timers):
        if self.monitor is not None and self.monitor.due(args.iteration):
            self.monitor.run(model, args.iteration)
        return self.step(data_iterator, model, args, timers)
