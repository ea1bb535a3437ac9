"""End-of-run outputs: the loss-curve PNG and the summary (printed and written as JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .step import History


def plot_loss_curve(history: History, path, title: str = "") -> Optional[Path]:
    """Training loss per step (light), its moving average, validation loss (markers), lr (right axis)."""
    if not history.train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history.train]
    loss = [r["loss"] for r in history.train]
    k = max(1, len(loss) // 50)
    smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss")
    ax.plot(steps, smooth, color="tab:blue", linewidth=1.6, label=f"train loss ({k}-step mean)")
    if history.valid:
        ax.plot([r["step"] for r in history.valid], [r["loss"] for r in history.valid], "o-", color="tab:red",
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (labelled tokens)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in history.train], color="tab:gray", linestyle=":", linewidth=1, label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    lines, labels = ax.get_legend_handles_labels()
    l2, lab2 = lr_ax.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lab2, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _acc(result: Optional[dict]) -> str:
    return "n/a" if not result else f"{100 * result['accuracy']:.1f}%"


def format_accuracy_table(before: Optional[dict], after: Optional[dict]) -> str:
    """Overall and per-category accuracy, before -> after."""
    rows = [f"  {'overall':<12} {_acc(before):>7} -> {_acc(after):>7}   (n={(after or before or {}).get('n', '?')})"]
    cats = sorted(set((before or {}).get("per_category", {})) | set((after or {}).get("per_category", {})))
    for c in cats:
        b = (before or {}).get("per_category", {}).get(c)
        a = (after or {}).get("per_category", {}).get(c)
        fmt = lambda v: "n/a" if v is None else f"{100 * (v['accuracy'] if isinstance(v, dict) else v):.1f}%"
        rows.append(f"  {c:<12} {fmt(b):>7} -> {fmt(a):>7}")
    return "\n".join(rows)


def write_summary(path, summary: dict) -> None:
    """finetune_summary.json, replaced atomically (a crash leaves the old one or the new one)."""
    from models.atomic_files import atomic_write_text
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
