"""What staged search buys on a trained checkpoint: greedy, then best_of_n, sentence and stage search at
several N with each judge, on the same held-out questions, in one table of accuracy and wall time.

    python benchmarks/search_gain.py --from_pretrained CKPT --data data/.../test.tsv \
        [--limit 300] [--ns 2,4,8] [--modes best_of_n,sentence,stage] [--judges logprob,consistency,self] \
        [--out DIR] [--threads 1]

Each run's records go to DIR/<mode>-<judge>-n<N>.jsonl as they finish; rerunning the same command resumes
them (a finished run is read back, not redone), so a long table can be built over several sittings.
The last line is JSON: {"<mode>/<judge>/<N>": {"accuracy": ..., "wall_s": ..., "well_formed": ...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def well_formed(records) -> float:
    """Share of responses with all four stages, once each, in order."""
    from dataset.cot_format import format_problems
    ok = [not format_problems(r.get("response") or "") for r in records]
    return sum(ok) / max(1, len(ok))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from_pretrained", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="held-out VLMEvalKit TSV (e.g. the synthetic test.tsv)")
    p.add_argument("--limit", type=int, default=300, help="first K questions (default 300)")
    p.add_argument("--ns", default="2,4,8", help="candidates per step")
    p.add_argument("--modes", default="best_of_n,sentence,stage")
    p.add_argument("--judges", default="logprob,consistency,self")
    p.add_argument("--batch-size", type=int, default=64, help="greedy: questions decoded together")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-stage-tokens", type=int, default=96, help="cap on one candidate of one step")
    p.add_argument("--temperature", type=float, default=0.6, help="candidates' sampling temperature (reference 0.6)")
    p.add_argument("--top-p", type=float, default=0.9, help="candidates' top-p (reference 0.9)")
    p.add_argument("--greedy-candidate", action="store_true", help="candidate 0 of every step is the greedy one")
    p.add_argument("--out", default=None, help="keep the per-run records here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is fastest on a busy box)")
    a = p.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from inference.evaluate import evaluate
    from inference.model_args import load_model
    from inference.options import REFERENCE_SAMPLING, SearchOptions
    sampling = REFERENCE_SAMPLING.replace(temperature=a.temperature, top_p=a.top_p)
    tag = "" if (a.temperature, a.top_p) == (0.6, 0.9) else f"-t{a.temperature:g}-p{a.top_p:g}"
    tag += "-g" if a.greedy_candidate else ""
    ns = [int(x) for x in a.ns.split(",") if x]
    runs = [("greedy", "", 1)] + [(m, j, n) for m in a.modes.split(",") if m for j in a.judges.split(",") if j
                                  for n in ns]
    args = argparse.Namespace(from_pretrained=a.from_pretrained, tokenizer=None, template=None, device="cpu",
                              bf16=False, fp16=False, model_seed=0)
    model, tokenizer, template = load_model(args)
    out = Path(a.out or tempfile.mkdtemp(prefix="search-gain-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    print(f"{'mode':<10} {'judge':<12} {'N':>2} {'accuracy':>8} {'vs greedy':>9} {'4 stages':>8} {'wall s':>7}  "
          f"per category", flush=True)
    for mode, judge, n in runs:
        path = out / (f"{mode}-{judge}-n{n}{tag}.jsonl" if judge else "greedy.jsonl")
        wall_path = path.with_suffix(".wall")
        t = time.time()
        res = evaluate(model, tokenizer, a.data, template=template, mode=mode, n=n, judge=judge or "logprob",
                       batch_size=a.batch_size, limit=a.limit, max_new_tokens=a.max_new_tokens, out_path=str(path),
                       resume=path.exists(), progress=False, model_name=os.path.abspath(a.from_pretrained),
                       search_options=SearchOptions(max_step_tokens=a.max_stage_tokens, sampling=sampling,
                                                    greedy_candidate=a.greedy_candidate))
        wall = time.time() - t
        if wall_path.exists():  # resumed: add the time the earlier sittings took
            wall += float(wall_path.read_text())
        wall_path.write_text(f"{wall:.1f}")
        key = f"{mode}/{judge}/{n}{tag}" if judge else "greedy"
        results[key] = {"accuracy": res["accuracy"], "wall_s": round(wall, 1), "n": res["n"],
                        "well_formed": round(well_formed(res["records"]), 4),
                        "per_category": {c: round(v, 4) for c, v in res["per_category"].items()}}
        gain = 100 * (res["accuracy"] - results["greedy"]["accuracy"])
        cats = " ".join(f"{c} {100 * v:.0f}" for c, v in sorted(res["per_category"].items()))
        print(f"{mode:<10} {judge:<12} {n:>2} {100 * res['accuracy']:7.1f}% {gain:+8.1f} "
              f"{100 * results[key]['well_formed']:7.0f}% {wall:7.0f}  {cats}", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
