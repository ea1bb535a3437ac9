"""Does the default fine-tuning run really learn? Runs the main job as `bash finetune/run.sh` does
(cogvlm-tiny, fresh synthetic data, through the DeepSpeed launcher) and reports:

- the wall time of the whole job (data generation, both evaluations and training included);
- held-out accuracy per category, before -> after (the option letter in <CONCLUSION>);
- a diagnostic that separates seeing from answering: how often the value the model names in its
  reasoning ("So the answer is red, option B.") is the right option's text, and how often the
  letter it gives matches the option it named itself.

    python benchmarks/finetune_learns.py [--out DIR] [finetune options ...]

Extra options go to the run (e.g. --train-iters 2000 --num-gpus 2). Where the held-out answers
(test.jsonl beside the TSV) are there, it also says how often the caption is the reference caption word
for word, and how often the letter is right when it is: a wrong caption is a failure to see, a right
caption with a wrong letter a failure to reason. An existing run is diagnosed without training with

    python benchmarks/finetune_learns.py --records RUN/eval_after.jsonl --data DATA_DIR
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

from dataset.cot_format import DEFAULT_STAGES, stage_text  # noqa: E402  (after the path above)

_NAMED = re.compile(r"answer is (.+?)(?:, option ([A-Z]))?\.", re.S)
_CAPTION_STAGE = next(s for s in DEFAULT_STAGES if s.name == "CAPTION")


def _caption(text: str):
    """The caption stage's text, stripped (None without a <CAPTION> tag)."""
    caption = stage_text(text or "", _CAPTION_STAGE)
    return caption.strip() if caption is not None else None


def reference_captions(tsv_path: Path) -> dict:
    """{TSV index: the reference caption} from the synthetic test.jsonl beside the TSV ({} when absent)."""
    jsonl = tsv_path.with_name("test.jsonl")
    if not jsonl.is_file():
        return {}
    out = {}
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        index = str(int(rec["id"].rsplit("-", 1)[1]))  # synth-test-000012 is TSV row 12
        out[index] = _caption(rec["conversations"][-1]["value"])
    return out


def diagnose(records_path: Path, tsv_path: Path) -> dict:
    """Per category: letter accuracy, named-value accuracy, letter consistent with the named value."""
    from inference.evaluate import read_tsv, row_options
    rows = {str(r["index"]): r for r in read_tsv(tsv_path)}
    captions = reference_captions(tsv_path)
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
        if captions:
            seen = captions.get(str(rec["index"])) == _caption(rec["response"])
            s["caption"] += seen
            s["right_when_seen"] += seen and bool(rec["correct"])
    out = {}
    for c, s in sorted(stats.items()):
        out[c] = {k: v / s["n"] for k, v in s.items() if k not in ("n", "right_when_seen")}
        out[c]["n"] = s["n"]
        if captions:  # the letter's accuracy among the answers whose caption is the reference's
            out[c]["right_when_seen"] = s["right_when_seen"] / s["caption"] if s["caption"] else None
    return out


def print_diagnosis(d: dict, before: dict) -> None:
    """One line per category: accuracy before -> after, then where the errors are."""
    with_caption = any("caption" in s for s in d.values())
    head = f"{'category':<12} {'before':>7} {'after':>7} | {'value named right':>17} {'letter = named':>14}"
    print(head + (f" {'caption exact':>13} {'right | caption exact':>21}" if with_caption else ""))
    for c, s in d.items():
        b = (before.get("per_category") or {}).get(c)
        b = b["accuracy"] if isinstance(b, dict) else b
        b = f"{100 * b:6.1f}%" if b is not None else f"{'-':>7}"
        line = (f"{c:<12} {b} {100 * s['letter']:6.1f}% | {100 * s['value']:16.1f}% "
                f"{100 * s['consistent']:13.1f}%")
        if with_caption:
            rws = s["right_when_seen"]
            line += f" {100 * s['caption']:12.1f}% " + (f"{100 * rws:20.1f}%" if rws is not None else f"{'-':>21}")
        print(line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="keep data and checkpoints here (default: a temporary folder)")
    p.add_argument("--records", default=None, help="diagnose these evaluation records (eval_after.jsonl) only")
    p.add_argument("--data", default=None, help="with --records: the synthetic data folder (test.tsv, test.jsonl)")
    a, extra = p.parse_known_args()
    if a.records:
        if not a.data:
            p.error("--records needs --data (the folder with the held-out test.tsv)")
        tsv = Path(a.data) / "test.tsv"
        if not tsv.is_file():
            p.error(f"{tsv}: no such file")
        d = diagnose(Path(a.records), tsv)
        print_diagnosis(d, {})
        n = sum(s["n"] for s in d.values())
        print(f"{'overall':<12} {'':>7} {100 * sum(s['letter'] * s['n'] for s in d.values()) / n:6.1f}%  (n={n})")
        return 0
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
            print_diagnosis(diagnose(run / "eval_after.jsonl", tsv), before)
            print(f"{'overall':<12} {100 * before.get('accuracy', 0):6.1f}% {100 * after.get('accuracy', 0):6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
