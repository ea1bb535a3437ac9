"""The Train tab's data preview: runs `python -m dataset.inspect` on the chosen files and splits its report
into counts, the token-length histogram, one decoded sample (trained parts marked) and the problems."""
from __future__ import annotations

import re
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from .launch_options import REPO

HIST_LINE = re.compile(r"^\s+(\d+)-(\d+)\s+(\d+) #*(  > max_length)?$")
SAMPLE_HEAD = re.compile(r"^sample \d+ \(.*\) as trained")
PROBLEMS_HEAD = re.compile(r"^(\d+) problem\(s\):?$")
OPEN, CLOSE = "⟦", "⟧"  # how dataset.inspect marks the trained parts
INSPECT_TIMEOUT_S = 300


def inspect_command(files: Sequence[str], image_root: Optional[str], max_length: Optional[int], template: Optional[str],
                    truncation: str, image_length: int, tokenizer: Optional[str]) -> List[str]:
    cmd = [sys.executable, "-m", "dataset.inspect", *files, "--image-length", str(image_length),
           "--truncation", truncation]
    if image_root:
        cmd += ["--image-root", image_root]
    if max_length:
        cmd += ["--max-length", str(max_length)]
    if template:
        cmd += ["--template", template]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    return cmd


def run_inspect(cmd: Sequence[str], cwd) -> Tuple[int, str]:
    """(exit status, stdout + stderr) of the inspector; exit 1 means problems were found, not a failure."""
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return 124, f"the inspector took more than {INSPECT_TIMEOUT_S} s"
    return done.returncode, done.stdout + (("\n" + done.stderr) if done.returncode not in (0, 1) else "")


def split_report(text: str) -> dict:
    """{"counts": [...], "histogram": [(lo, hi, n, over)], "sample": str, "problems": [...]} of an inspector report."""
    counts, hist, sample, problems = [], [], "", []
    section = "counts"
    for line in text.splitlines():
        m = HIST_LINE.match(line)
        if section in ("counts", "hist") and m:
            hist.append((int(m[1]), int(m[2]), int(m[3]), bool(m[4])))
            section = "hist"
            continue
        if SAMPLE_HEAD.match(line):
            section, sample = "sample", ""
            counts.append(line.rstrip(":"))
            continue
        if PROBLEMS_HEAD.match(line):
            section = "problems"
            counts.append(line.rstrip(":"))
            continue
        if section == "sample" and line.strip():
            sample += line
        elif section == "problems" and line.strip():
            problems.append(line.strip())
        elif line.strip() and section in ("counts", "hist"):
            counts.append(line.strip())
    return {"counts": counts, "histogram": hist, "sample": sample, "problems": problems}


def marked_spans(sample: str) -> List[Tuple[str, Optional[str]]]:
    """The sample's text as (piece, "trained" | None) for a HighlightedText."""
    out: List[Tuple[str, Optional[str]]] = []
    for piece in re.split(f"({OPEN}.*?{CLOSE})", sample, flags=re.S):
        if not piece:
            continue
        if piece.startswith(OPEN) and piece.endswith(CLOSE):
            out.append((piece[1:-1], "trained"))
        else:
            out.append((piece, None))
    return out


def histogram_figure(hist):
    """Bar chart of samples per token-length bin; bins past max_length in red."""
    if not hist:
        return None
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 2.8), dpi=90)
    ax = fig.add_subplot()
    ax.bar([f"{lo}-{hi}" for lo, hi, _, _ in hist], [n for _, _, n, _ in hist],
           color=["tab:red" if over else "tab:blue" for *_, over in hist])
    ax.set_xlabel("tokens per sample (image included)")
    ax.set_ylabel("samples")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    return fig
