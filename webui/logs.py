"""Reading what the commands write: log tails, the progress line, train_log.jsonl, the run summary,
evaluation records; and the plots and tables the board shows of them."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PROGRESS = re.compile(r"\[train\] step\s+(\d+)/(\d+) \| loss ([\d.eE+-]+|nan) \| lr ([\d.eE+-]+) .*?"
                      r"elapsed (\S+) \| ETA (\S+)")
RUN_DIR = re.compile(r"^\[run\] checkpoints: (\S+)", re.M)
TQDM = re.compile(r"(\d+)/(\d+) \[")


def tail(path, lines: int = 40, max_bytes: int = 1 << 16) -> str:
    """The last `lines` lines of a log (progress bars' carriage returns count as line ends)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p for p in re.split(r"\r\n|\r|\n", data) if p.strip()]
    return "\n".join(parts[-lines:])


def read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def progress(log_text: str) -> Optional[dict]:
    """The latest `[train] step i/N | loss | lr | ... | ETA` line, parsed."""
    found = PROGRESS.findall(log_text)
    if not found:
        return None
    step, total, loss, lr, elapsed, eta = found[-1]
    return {"step": int(step), "total": int(total), "loss": float(loss), "lr": float(lr),
            "elapsed": elapsed, "eta": eta}


def tqdm_progress(log_text: str) -> Optional[Tuple[int, int]]:
    """(done, total) of the last tqdm bar in a log."""
    found = TQDM.findall(log_text[-4000:])
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def progress_html(done: int, total: int, text: str) -> str:
    pct = 100.0 * done / total if total else 0.0
    return (f'<div class="cogcot-progress"><progress value="{done}" max="{max(total, 1)}" style="width:100%">'
            '</progress>'
            f'<div>{html.escape(text)} ({pct:.0f}%)</div></div>')


def run_dir(log_text: str, cwd) -> Optional[Path]:
    """The checkpoint folder a training run named in its log (relative to its working directory)."""
    found = RUN_DIR.findall(log_text)
    if not found:
        return None
    p = Path(found[-1])
    return p if p.is_absolute() else Path(cwd) / p


def train_log(path) -> Dict[str, List[dict]]:
    """train_log.jsonl as {"train": [...], "valid": [...], "accuracy": [...]} (a half-written last line is skipped)."""
    out: Dict[str, List[dict]] = {"train": [], "valid": [], "accuracy": []}
    for line in read_text(path).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.setdefault(rec.pop("kind", "train"), []).append(rec)
    return out


def summary(run: Optional[Path]) -> Optional[dict]:
    if run is None:
        return None
    try:
        return json.loads((run / "finetune_summary.json").read_text())
    except (OSError, ValueError):
        return None


def latest_saved(run: Optional[Path]) -> Optional[str]:
    """The iteration a run's `latest` file names (what --resume continues from)."""
    try:
        return (run / "latest").read_text().strip() or None
    except (OSError, TypeError):
        return None


def curves(history: Dict[str, List[dict]]):
    """(loss figure, lr figure) from train_log records; (None, None) before the first step."""
    if not history["train"]:
        return None, None
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    steps = [r["step"] for r in history["train"]]
    loss_fig = Figure(figsize=(6, 3.2), dpi=90)
    ax = loss_fig.add_subplot()
    ax.plot(steps, [r["loss"] for r in history["train"]], color="tab:blue", label="train loss")
    if history["valid"]:
        ax.plot([r["step"] for r in history["valid"]], [r["loss"] for r in history["valid"]], "o-",
                color="tab:red", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    loss_fig.tight_layout()
    lr_fig = Figure(figsize=(6, 3.2), dpi=90)
    ax = lr_fig.add_subplot()
    ax.plot(steps, [r["lr"] for r in history["train"]], color="tab:gray")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    lr_fig.tight_layout()
    return loss_fig, lr_fig


def _pct(v) -> str:
    if v is None:
        return "n/a"
    return f"{100 * (v['accuracy'] if isinstance(v, dict) else v):.1f}%"


def accuracy_table(before: Optional[dict], after: Optional[dict]) -> str:
    """Markdown: overall and per-category accuracy, before -> after (finetune_summary.json's results)."""
    before, after = before or {}, after or {}
    rows = ["| category | n | before | after |", "|---|---:|---:|---:|",
            f"| **overall** | {after.get('n', before.get('n', '?'))} | {_pct(before.get('accuracy'))} | "
            f"{_pct(after.get('accuracy'))} |"]
    counts = after.get("counts") or before.get("counts") or {}
    for c in sorted(set(before.get("per_category", {})) | set(after.get("per_category", {}))):
        rows.append(f"| {c} | {counts.get(c, '')} | {_pct(before.get('per_category', {}).get(c))} | "
                    f"{_pct(after.get('per_category', {}).get(c))} |")
    return "\n".join(rows)


def records(path) -> List[dict]:
    """Per-question evaluation records (inference.evaluate --out), skipping its header/setup lines."""
    out = []
    for line in read_text(path).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "index" in rec and "correct" in rec:
            out.append(rec)
    return out
