"""inference.server under load: concurrent clients (batched by the model thread) against one client at a time.

    python benchmarks/server_load.py [--from_pretrained cogvlm-tiny] [--requests 64] [--concurrency 8]
                                     [--max-tokens 16] [--max-batch 8] [--threads 1] [--repeats 3] [--device cpu]

Starts `python -m inference.server` as its own process on a free 127.0.0.1 port, then sends the same
short greedy requests (`--requests` of them, distinct questions, `--max-tokens` each) through the openai
SDK: one client at a time, then `--concurrency` clients at once, alternating `--repeats` times (so load
from other jobs falls on both alike; the fastest run of each is shown, as noise only slows a run).
Printed for both: requests/s, p50/p95 latency, decode steps and mean rows per step (from the server's
/v1/stats: how much the model thread batched; requests join the running batch between steps); then
the throughput ratio, whose target is >= 3x at 8 clients. The LAST line is a JSON object with every
figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RATIO = 3.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    """`python -m inference.server` as a child process (its own interpreter: no GIL shared with the clients)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "inference.server", "--from_pretrained", args.from_pretrained, "--port", str(port),
           "--max-batch", str(args.max_batch), "--device", args.device, "--threads", str(args.threads),
           "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 300) -> str:
    """The served model id, once /v1/models answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        try:
            return httpx.get(f"{url}/models", timeout=2).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer within {timeout:.0f} s")


def percentile(values, q: float) -> float:
    """The nearest-rank q-th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_phase(client, model_id: str, questions, concurrency: int, max_tokens: int, url: str) -> dict:
    """Send every question with `concurrency` clients; latencies, requests/s and the batch sizes seen."""
    def one(q):
        start = time.perf_counter()
        r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": q}],
                                           max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - start, r.usage.completion_tokens

    before = httpx.get(f"{url}/stats").json()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, questions))
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/stats").json()
    rows = {int(k): v - before["batch_rows"].get(k, 0) for k, v in after["batch_rows"].items()}  # rows: steps
    steps = sum(rows.values())
    latencies = [lat for lat, _ in results]
    return {"clients": concurrency, "requests": len(questions), "wall_s": wall, "requests_per_s": len(questions) / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 95),
            "completion_tokens": sum(t for _, t in results), "steps": steps,
            "mean_rows_per_step": sum(k * v for k, v in rows.items()) / max(steps, 1),
            "step_rows": {k: v for k, v in sorted(rows.items()) if v}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from_pretrained", default="cogvlm-tiny")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each phase; the fastest is shown")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = start_server(args, port)
    try:
        model_id = wait_ready(proc, url)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        questions = [f"Question {k}: what does the picture show?" for k in range(args.requests)]
        run_phase(client, model_id, questions[:args.concurrency], args.concurrency, args.max_tokens, url)  # warm-up
        singles, manys = [], []
        for _ in range(args.repeats):  # alternating, so load from other jobs falls on both alike
            singles.append(run_phase(client, model_id, questions, 1, args.max_tokens, url))
            manys.append(run_phase(client, model_id, questions, args.concurrency, args.max_tokens, url))
        single = max(singles, key=lambda r: r["requests_per_s"])  # timing noise only slows a run down
        many = max(manys, key=lambda r: r["requests_per_s"])
    finally:
        proc.terminate()
        proc.wait(30)
    with open("/proc/loadavg") if os.path.exists("/proc/loadavg") else open(os.devnull) as f:
        load = f.read().strip()
    print(f"model {args.from_pretrained}, {args.requests} requests of max {args.max_tokens} tokens (greedy), "
          f"server torch threads {args.threads}, max batch {args.max_batch}, fastest of {args.repeats}; load {load}")
    print("req/s of every run: 1 client " + ", ".join(f"{r['requests_per_s']:.1f}" for r in singles) +
          f"; {args.concurrency} clients " + ", ".join(f"{r['requests_per_s']:.1f}" for r in manys))
    print(f"{'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'steps':>7} {'rows/step':>10} {'tokens':>7}")
    for r in (single, many):
        print(f"{r['clients']:>8} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['steps']:>7} {r['mean_rows_per_step']:>10.2f} {r['completion_tokens']:>7}")
    print(f"rows decoded together with {args.concurrency} clients (rows: steps): {many['step_rows']}")
    ratio = many["requests_per_s"] / single["requests_per_s"]
    print(f"throughput {args.concurrency} clients / 1 client: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    print(json.dumps({"ratio": ratio, "single": single, "concurrent": many, "loadavg": load,
                      "runs_requests_per_s": {"1": [r["requests_per_s"] for r in singles],
                                              str(args.concurrency): [r["requests_per_s"] for r in manys]}}))


if __name__ == "__main__":
    main()
