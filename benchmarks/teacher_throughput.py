"""`dataset.teacher` throughput against a fake OpenAI-compatible endpoint of fixed latency: samples/s at
1, 4 and 16 workers against the limit (workers / latency), and the teacher's own cost per sample.

    python benchmarks/teacher_throughput.py [--latency 0.4] [--workers 1,4,16] [--per-worker 20]

The fake runs in its own process (tests/fake_openai.py, answering a correct four-stage reply after
`--latency` seconds), so the CPU time measured here is the teacher's: reading the input, decoding and
base64-encoding images, the SDK request, the checks and the appended output. Target: at 16 workers
>= 90% of the limit (16 / 0.4 s = 40 samples/s).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def serve(latency: float) -> None:
    """The fake endpoint: a well-formed reply agreeing with the prompt's answer after `latency` seconds."""
    import threading

    from tests.fake_openai import FakeOpenAI, prompt_text, reply

    def answer(body):
        if not body["messages"][-1]["content"]:
            return reply("")
        m = re.search(r"The right answer is: (\w)", prompt_text(body))
        letter = m.group(1) if m else "A"
        return reply(f"<SUMMARY> I compare the options. </SUMMARY> <CAPTION> The image shows shapes. </CAPTION> "
                     f"<REASONING> Looking at the image, the answer is option {letter}. </REASONING> "
                     f"<CONCLUSION> {letter} </CONCLUSION>", delay=latency, usage=(300, 60))

    with FakeOpenAI(answer) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()


def measure(data: str, base_url: str, workers: int, n: int, out_dir: str):
    """(wall seconds, teacher CPU seconds, exit code) of one teacher run over the first `n` samples."""
    from dataset.teacher import main as teacher_main
    out = os.path.join(out_dir, f"out-w{workers}-n{n}.jsonl")
    argv = ["--data", data, "--out", out, "--api-base", base_url, "--api-model", "fake", "--workers", str(workers),
            "--limit", str(n), "--no-progress", "--api-timeout", "30"]
    wall, cpu = time.perf_counter(), time.process_time()
    with open(os.devnull, "w") as sink:
        stdout, stderr, sys.stdout, sys.stderr = sys.stdout, sys.stderr, sink, sink
        try:
            code = teacher_main(argv)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    return time.perf_counter() - wall, time.process_time() - cpu, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.4, help="the fake endpoint's latency, seconds")
    p.add_argument("--workers", default="1,4,16", help="worker counts to measure")
    p.add_argument("--per-worker", type=int, default=20, help="samples per worker in each run")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: run the fake
    args = p.parse_args()
    if args.serve:
        return serve(args.latency)
    from dataset.synth import generate

    counts = [int(w) for w in args.workers.split(",")]
    total = max(counts) * args.per_worker
    fake = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--latency", str(args.latency)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        base_url = fake.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            paths = generate(tmp, total, seed=0, n_test=0, progress=False)
            print(f"fake endpoint latency {args.latency:g} s; {total} synthetic samples available; "
                  f"load {open('/proc/loadavg').read().split()[0:3] if os.path.exists('/proc/loadavg') else '?'}")
            print(f"{'workers':>7} {'samples':>7} {'wall s':>7} {'samples/s':>9} {'limit/s':>8} {'of limit':>8} "
                  f"{'overhead ms/sample':>18} {'cpu ms/sample':>13}")
            measure(str(paths["train"]), base_url, 2, 4, os.path.join(tmp, "warm"))  # SDK's lazy imports, not timed
            for w in counts:
                n = w * args.per_worker
                wall, cpu, code = measure(str(paths["train"]), base_url, w, n, tmp)
                rate, limit = n / wall, w / args.latency
                overhead = (wall * w / n - args.latency) * 1000  # per sample, beyond the endpoint's latency
                print(f"{w:>7} {n:>7} {wall:>7.2f} {rate:>9.2f} {limit:>8.2f} {rate / limit:>8.1%} "
                      f"{overhead:>18.1f} {cpu / n * 1000:>13.1f}" + ("" if code == 0 else f"  (exit {code})"))
    finally:
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()
