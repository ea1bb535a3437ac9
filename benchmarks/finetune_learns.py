"""Does the default fine-tuning run really learn? Runs the main job as `bash finetune/run.sh` does
(cogvlm-tiny, fresh synthetic data, through the DeepSpeed launcher) and reports:

- the wall time of the whole job (data generation, both evaluations and training included);
- held-out accuracy per category, before -> after (the option letter in <CONCLUSION>);
- a diagnostic that separates seeing from answering: how often the value the model names in its
  reasoning ("So the answer is red, option B.") is the right option's text, and how often the
  letter it gives matches the option it named itself.

    python benchmarks/finetune_learns.py [--out DIR] [finetune options ...]

Extra options go to the run (e.g. --train-iters 2000 --num-gpus 2).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_NAMED = re.compile(r"answer is (.+?)(?:, option ([A-Z]))?\.", re.S)


def diagnose(records_path: Path, tsv_path: Path) -> dict:
    """Per category: letter accuracy, named-value accuracy, letter consistent with the named value."""
    from inference.evaluate import read_tsv, row_options
    rows = {str(r["index"]): r for r in read_tsv(tsv_path)}
    stats = defaultdict(lambda: defaultdict(int))
    for line in records_path.read_text().splitlines():
        rec = json.loads(line)
        row = rows[str(rec["index"])]
        options = {k: v.strip().lower() for k, v in row_options(row).items()}
        m = _NAMED.search(rec["response"])
        named = m.group(1).strip().lower() if m else None
        s = stats[rec["category"]]
        s["n"] += 1
        s["letter"] += bool(rec["correct"])
        s["value"] += named == options[row["answer"]]
        named_letter = next((k for k, v in options.items() if v == named), None)
        s["consistent"] += named_letter is not None and named_letter == rec["prediction"]
    return {c: {k: (v / s["n"] if k != "n" else v) for k, v in s.items()} for c, s in sorted(stats.items())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="keep data and checkpoints here (default: a temporary folder)")
    a, extra = p.parse_known_args()
    from finetune import launch
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        t0 = time.time()
        rc = launch.main(["--save", str(out / "checkpoints"), "--data-dir", str(out / "data"), *extra])
        wall = time.time() - t0
        if rc:
            print(f"finetune_learns: the run failed (exit {rc})")
            return rc
        run = max((d for d in (out / "checkpoints").iterdir() if d.is_dir() and d.name != "runs"),
                  key=lambda d: d.stat().st_mtime)
        summary = json.loads((run / "finetune_summary.json").read_text())
        tsv = next((out / "data").glob("*/test.tsv"))
        print(f"\nwall time of the whole job: {wall:.0f} s ({wall / 60:.1f} min); training "
              f"{summary['train_seconds']:.0f} s at {summary['samples_per_second']} samples/s")
        before, after = summary["accuracy_before"] or {}, summary["accuracy_after"] or {}
        if (run / "eval_after.jsonl").is_file():
            d = diagnose(run / "eval_after.jsonl", tsv)
            print(f"{'category':<12} {'before':>7} {'after':>7} | {'value named right':>17} {'letter = named':>14}")
            for c, s in d.items():
                b = (before.get("per_category") or {}).get(c)
                b = b["accuracy"] if isinstance(b, dict) else b
                print(f"{c:<12} {100 * (b or 0):6.1f}% {100 * s['letter']:6.1f}% | {100 * s['value']:16.1f}% "
                      f"{100 * s['consistent']:13.1f}%")
            print(f"{'overall':<12} {100 * before.get('accuracy', 0):6.1f}% {100 * after.get('accuracy', 0):6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
