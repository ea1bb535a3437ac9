"""What four-stage reasoning buys: the same model, data items, steps and seed trained three ways, the
four tagged stages (the default), the same reasoning as plain text without tags, and the direct answer
alone (the <CONCLUSION> stage), each scored greedily on the same held-out questions, per category.

    python benchmarks/cot_ablation.py [--styles tagged,plain,direct] [--out DIR] [finetune options ...]

Extra options go to every run (e.g. --train-iters 400 --synth-n 8000). Each run is `bash finetune/run.sh`
with `--synth-answer-style STYLE`: the synthetic items (images, questions, options, letters) are the
same in every style, only the answer text differs. The last line is JSON {style: {"accuracy": ...}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_style(style: str, out: Path, extra) -> dict:
    """Train and evaluate one answer style; returns the finetune summary plus the wall time."""
    from finetune import launch
    save = out / style / "checkpoints"
    t = time.time()
    rc = launch.main(["--save", str(save), "--data-dir", str(out / "data"), "--synth-answer-style", style,
                      "--experiment-name", f"ablation-{style}", *extra])
    if rc:
        raise SystemExit(f"cot_ablation: the {style} run failed (exit {rc})")
    run = max((d for d in save.iterdir() if d.is_dir() and d.name != "runs"), key=lambda d: d.stat().st_mtime)
    summary = json.loads((run / "finetune_summary.json").read_text())
    summary["wall_seconds"] = time.time() - t
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--styles", default="tagged,plain,direct", help="answer styles to train, comma-separated")
    p.add_argument("--out", default=None, help="keep data and checkpoints here (default: a temporary folder)")
    a, extra = p.parse_known_args()
    styles = [s for s in a.styles.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        summaries = {s: run_style(s, out, extra) for s in styles}
    cats = sorted({c for s in summaries.values() for c in (s["accuracy_after"] or {}).get("per_category", {})})
    print("\nheld-out accuracy (greedy), same items, steps and seed:")
    print(f"{'answer style':<14} {'overall':>8} " + " ".join(f"{c:>10}" for c in cats) + f" {'train s':>8}")
    table = {}
    for style, s in summaries.items():
        acc = s["accuracy_after"] or {}
        per = acc.get("per_category", {})
        per = {c: (v["accuracy"] if isinstance(v, dict) else v) for c, v in per.items()}
        table[style] = {"accuracy": acc.get("accuracy"), "per_category": per, "n": acc.get("n"),
                        "train_seconds": s["train_seconds"], "iteration": s["iteration"]}
        print(f"{style:<14} {100 * acc.get('accuracy', 0):7.1f}% " +
              " ".join(f"{100 * per.get(c, 0):9.1f}%" for c in cats) + f" {s['train_seconds']:8.0f}")
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
