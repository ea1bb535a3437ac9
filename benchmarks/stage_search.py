"""Staged search: the reference procedure against the fast one, on the same model and questions.

    python benchmarks/stage_search.py [--preset cogvlm-tiny | --from_pretrained CKPT] [--device cpu]
                                      [--questions K] [--ns 2,4,8] [--judge logprob|self] [--mode stage]

For each N the same K questions (`dataset.synth` items at the model's image size) are answered by
`StagedSearch` twice: `reference=True` (one candidate at a time, image and prefix re-encoded for every
candidate and judge call, as the LLaVA-CoT reference code) and the fast runner (one batch of N rows
over the shared prefix, the winner's cache kept). Printed per run: wall time, LM forward tokens
(positions through the language model, counted by a forward pre-hook), LM calls, ViT images, peak
memory, and whether both runs chose the same answers. Each (N, runner) runs --repeats times (same
answers and counts every time), the two runners alternating; the table keeps the fastest wall time
of each, as timing noise only adds; "cpu s" is the process's CPU time over the same run (on CPU it
is far less moved by other jobs' load than wall time). The LAST line is a JSON object
{N: {"speedup_wall": t_ref / t_fast, "speedup_cpu": cpu_ref / cpu_fast, "forward_token_ratio": tokens_ref / tokens_fast,
"kv_held_mb": {runner: MB}, "peak_mb": {runner: MB}}}.

Memory: "KV MB" is the largest KV cache a single forward attended over as the cache reports it
(`ForwardCounter`, `cache.nbytes()`), "KV held" the largest storage a cache really kept alive after a
forward, found by walking its tensors (so it also checks what a cache reports: prefix once plus each
row's buffer in the fast mode, one candidate's dense cache in the reference). "peak MB": on GPU the peak
of torch.cuda.max_memory_allocated over the run minus the memory allocated at its start; on CPU the
process's peak RSS (VmHWM, reset at the run's start through /proc/self/clear_refs, after malloc_trim)
minus the RSS at its start: it also sees allocator behaviour and other buffers, so read it as a rough
figure. "RSS MB": the process's whole peak (model and interpreter included).

A random-weight model (cogvlm-tiny) rarely writes a stage's end tag, so every candidate runs to the
per-step cap (--max-stage-tokens, default 16): the run is "every stage at the cap", the honest worst case
for the fast mode's early stopping. Pass a trained checkpoint with --from_pretrained for real stages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dataset.synth import CATEGORIES, item_rng, make_item  # noqa: E402
from inference.model_args import load_model  # noqa: E402
from inference.generation import ForwardCounter  # noqa: E402
from inference.image import image_size_of  # noqa: E402
from inference.options import REFERENCE_SAMPLING, SEARCH_MODES, SearchOptions, derive_seed  # noqa: E402
from inference.search import StagedSearch  # noqa: E402


def held_bytes(obj, seen=None) -> int:
    """Bytes of the distinct tensor storages `obj` (a cache, or anything holding tensors in attributes,
    dicts, lists or tuples) keeps alive: what was allocated, whatever the cache itself reports."""
    storages = {} if seen is None else seen
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif hasattr(x, "__dict__") and not isinstance(x, type):
            stack.extend(vars(x).values())
    return sum(storages.values())


class HeldKV:
    """A forward hook recording the largest storage a KV cache held right after a forward (`held_bytes`)."""

    def __init__(self, model):
        self.peak = 0
        self._handle = model.register_forward_hook(self._after, with_kwargs=True)

    def _after(self, module, args, kwargs, output):
        cache = kwargs.get("kv_cache")
        if cache is not None:
            self.peak = max(self.peak, held_bytes(cache))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory over a block, above its level at the start (bytes); `kind` says what was measured.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak RSS (VmHWM), reset at the start by
    writing 5 to /proc/self/clear_refs (Linux >= 4.0); where that is refused, RSS sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "CPU peak RSS"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import ctypes
        import psutil
        try:  # hand freed heap back to the OS first, so this run's growth shows in the RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._proc = psutil.Process()
        self.start = self.peak_rss = self._proc.memory_info().rss
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.kind = "CPU peak RSS (VmHWM)"
        except OSError:
            self.kind = "CPU peak RSS (sampled)"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            self.process_peak = self.peak + self.start
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        else:
            self.peak_rss = _status_kb("VmHWM") * 1024
        self.peak = self.peak_rss - self.start
        self.process_peak = self.peak_rss


def questions(k: int, image_size: int, seed: int):
    items = [make_item(item_rng(seed, "test", i), CATEGORIES[i % len(CATEGORIES)], image_size) for i in range(k)]
    return [(it.image, it.prompt) for it in items]


def run(model, tokenizer, template, qs, opts: SearchOptions, judge: str, judge_tokens: int, device):
    opts = opts.replace(judge_sampling=REFERENCE_SAMPLING.replace(max_new_tokens=judge_tokens))
    search = StagedSearch(model, tokenizer, judge=judge, options=opts, template=template)
    texts = []
    with ForwardCounter(model) as count, HeldKV(model) as held, PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        for i, (image, prompt) in enumerate(qs):
            texts.append(search(image, prompt, seed=derive_seed(opts.seed, i)).text)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"wall_s": wall, "cpu_s": cpu, **count.snapshot(), "peak_mem_mb": mem.peak / 2 ** 20, "mem_kind": mem.kind,
            "process_peak_mb": mem.process_peak / 2 ** 20, "kv_peak_mb": count.kv_peak_bytes / 2 ** 20,
            "kv_held_mb": held.peak / 2 ** 20, "texts": texts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cogvlm-tiny", help="preset name (random weights for cogvlm-tiny)")
    p.add_argument("--from_pretrained", default=None, help="a checkpoint directory (overrides --preset)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--ns", default="2,4,8", help="candidates per step, comma-separated")
    p.add_argument("--mode", default="stage", choices=SEARCH_MODES)
    p.add_argument("--judge", default="logprob", choices=("logprob", "self"))
    p.add_argument("--max-stage-tokens", type=int, default=16,
                   help="cap per candidate per step; the whole answer is capped at 4x this (best_of_n: per answer)")
    p.add_argument("--judge-max-tokens", type=int, default=16, help="cap per self-judge verdict")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1: no OpenMP spinning on a busy box)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs per (N, runner); the fastest wall time is kept")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    margs = argparse.Namespace(from_pretrained=args.from_pretrained or args.preset, tokenizer=args.tokenizer,
                               template=None, device=args.device, bf16=args.bf16, fp16=False, model_seed=args.seed)
    model, tokenizer, template = load_model(margs)
    device = next(model.parameters()).device
    size = image_size_of(model.args)[0]
    qs = questions(args.questions, size, args.seed)
    print(f"model {margs.from_pretrained} on {device} ({next(model.parameters()).dtype}), {args.questions} questions, "
          f"mode {args.mode}, judge {args.judge}, per-step cap {args.max_stage_tokens} tokens, "
          f"torch threads {torch.get_num_threads()}")
    # warm-up (allocator, kernels) outside the measurements
    run(model, tokenizer, template, qs[:1], SearchOptions(mode=args.mode, n=2, max_step_tokens=2), args.judge, 2,
        device)
    header = (f"{'N':>3} {'runner':<10} {'wall s':>8} {'cpu s':>7} {'LM tokens':>10} {'LM calls':>9} {'ViT imgs':>9} "
              f"{'KV MB':>7} {'KV held':>8} {'peak MB':>8} {'RSS MB':>7} {'same':>5}")
    rows, summary, kind = [header, "-" * len(header)], {}, None
    for n in [int(x) for x in args.ns.split(",")]:
        runs = {True: [], False: []}
        for _ in range(args.repeats):  # alternate the runners, so both see the same machine load
            for reference in (True, False):
                opts = SearchOptions(mode=args.mode, n=n, max_step_tokens=args.max_stage_tokens,
                                     max_new_tokens=len(SearchOptions().stages) * args.max_stage_tokens,
                                     reference=reference, seed=args.seed)
                runs[reference].append(run(model, tokenizer, template, qs, opts, args.judge, args.judge_max_tokens,
                                           device))
        res = {}
        for reference, rs in runs.items():
            assert all(r["texts"] == rs[0]["texts"] and r["lm_tokens"] == rs[0]["lm_tokens"] for r in rs)
            res[reference] = min(rs, key=lambda r: r["wall_s"])
            res[reference]["cpu_s"] = min(r["cpu_s"] for r in rs)
            for key in ("peak_mem_mb", "process_peak_mb"):
                res[reference][key] = max(r[key] for r in rs)
            kind = res[reference]["mem_kind"]
        same = sum(a == b for a, b in zip(res[True]["texts"], res[False]["texts"]))
        for reference, name in ((True, "reference"), (False, "fast")):
            r = res[reference]
            rows.append(f"{n:>3} {name:<10} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} {r['lm_tokens']:>10} {r['lm_calls']:>9} "
                        f"{r['vision_images']:>9} {r['kv_peak_mb']:>7.2f} {r['kv_held_mb']:>8.2f} {r['peak_mem_mb']:>8.1f} "
                        f"{r['process_peak_mb']:>7.0f} {f'{same}/{len(qs)}':>5}")
        summary[str(n)] = {"speedup_wall": round(res[True]["wall_s"] / res[False]["wall_s"], 3),
                           "speedup_cpu": round(res[True]["cpu_s"] / res[False]["cpu_s"], 3),
                           "forward_token_ratio": round(res[True]["lm_tokens"] / res[False]["lm_tokens"], 3),
                           "kv_held_mb": {"reference": round(res[True]["kv_held_mb"], 3),
                                          "fast": round(res[False]["kv_held_mb"], 3)},
                           "peak_mb": {"reference": round(res[True]["peak_mem_mb"], 1),
                                       "fast": round(res[False]["peak_mem_mb"], 1)}}
    print("\n".join(rows))
    print(f"(KV MB: the largest KV cache one forward attended over, as the cache reports it; KV held: the "
          f"largest storage a cache really held after a forward; peak MB: {kind} above the run's start; RSS MB: "
          "the process's peak; 'same': questions where both runners chose the same answer)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
