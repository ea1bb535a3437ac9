"""Host memory of streamed pretraining data: peak RSS while reading a whole caption corpus from tar
shards (ShardStream -> cogvlm-tiny samples -> batches), for a corpus and one 10x larger.

    python benchmarks/pretrain_stream.py [--n 2000] [--scale 10] [--shard-size 500] [--batch-size 8]

Each size is measured in a fresh process (peak resident set size, ru_maxrss); the target is a ratio
large/small within 1.10. The last line is one JSON object with both figures and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_corpus(folder: str, n: int, shard_size: int, pool: int = 64) -> str:
    """n captions over a pool of random 64x64 PNGs, written as shards; returns the brace pattern."""
    import numpy as np
    from PIL import Image
    from dataset.shards import write_shards
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    for i in range(pool):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(folder, "img", f"{i}.png"))
    words = ["red", "green", "blue", "square", "circle", "small", "large", "left", "right", "top", "bottom"]
    with open(os.path.join(folder, "caps.jsonl"), "w") as f:
        for i in range(n):
            text = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(5 + i % 40))
            f.write(json.dumps({"image": f"img/{i % pool}.png", "text": f"caption {i}: {text}"}) + "\n")
    out = write_shards([os.path.join(folder, "caps.jsonl")], os.path.join(folder, "shards", "cap-%06d.tar"), shard_size)
    return out["pattern"]


def measure(pattern: str, batch_size: int) -> dict:
    """Stream every sample of `pattern` once into batches; peak RSS (MiB) and samples read."""
    from dataset import DataCollator, ImageProcessor, TextProcessor
    from dataset.pretrain_records import SampleEncoder
    from dataset.shards import ShardStream
    from models.config import get_preset
    from models.tokenizer import tokenizer_for
    cfg = get_preset("cogvlm-tiny")
    tok = tokenizer_for("cogvlm-tiny", None)
    encoder = SampleEncoder(ImageProcessor(cfg.eva.image_size), TextProcessor(tok, 512, cfg.image_length))
    collate, batch, n, t = DataCollator(), [], 0, time.time()
    for sample in ShardStream(pattern, encoder, epochs=1, shuffle_buffer=1000, rank=0, world_size=1):
        batch.append(sample)
        if len(batch) == batch_size:
            collate(batch)
            n, batch = n + len(batch), []
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"samples": n, "peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(time.time() - t, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="captions in the small corpus")
    p.add_argument("--scale", type=int, default=10, help="the large corpus is this many times larger")
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--measure", metavar="PATTERN", help=argparse.SUPPRESS)  # child process: one measurement
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.batch_size)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="cogcot-stream-") as tmp:
        for name, n in (("small", a.n), ("large", a.n * a.scale)):
            t = time.time()
            pattern = make_corpus(os.path.join(tmp, name), n, a.shard_size)
            size = sum(os.path.getsize(os.path.join(tmp, name, "shards", f))
                       for f in os.listdir(os.path.join(tmp, name, "shards")))
            print(f"[{name}] {n} captions in shards ({size / 2**20:.1f} MiB on disk, {time.time() - t:.0f} s to write)",
                  flush=True)
            child = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", pattern,
                                    "--batch-size", str(a.batch_size)], capture_output=True, text=True, check=True)
            results[name] = json.loads(child.stdout.strip().splitlines()[-1]) | {"shards_mib": round(size / 2**20, 1)}
            print(f"[{name}] streamed {results[name]['samples']} samples in {results[name]['seconds']} s, "
                  f"peak RSS {results[name]['peak_rss_mib']} MiB", flush=True)
    ratio = results["large"]["peak_rss_mib"] / results["small"]["peak_rss_mib"]
    print(f"peak RSS large/small = {ratio:.3f} for a {a.scale}x larger corpus (target <= 1.10)")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(json.dumps({"small": results["small"], "large": results["large"], "rss_ratio": round(ratio, 3),
                      "scale": a.scale, "loadavg": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
