"""Data pipeline numbers at the cogvlm-tiny preset: load/validate time, samples/s through a DataLoader
with 0 and 2 workers, and the padding waste of batches (pad tokens / all tokens).

    python benchmarks/data_throughput.py [--n 500] [--batch-size 8] [--repeats 3]

Data: `dataset.synth` items (56 px PNGs, four-stage answers), the embedded default training data.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dataset import DataCollator, ImageProcessor, ItemDataset, TextProcessor  # noqa: E402


def throughput(ds, collate, batch_size: int, workers: int, epochs: int):
    """Samples/s of the first epoch (worker start-up included) and the median of the later ones."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        seen = sum(len(b["lengths"]) for b in loader)
        assert seen == len(ds)
        rates.append(len(ds) / (time.perf_counter() - start))
    return rates[0], statistics.median(rates[1:])


def padding_waste(ds, collate, batch_size: int):
    """Mean over batches of pad tokens / (B * n); n is the batch's longest sample."""
    waste, lengths = [], []
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        b, n = batch["input_ids"].shape
        waste.append(1 - batch["lengths"].sum().item() / (b * n))
        lengths += batch["lengths"].tolist()
    return statistics.mean(waste), lengths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the main process (DataLoader workers always use 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dataset.synth import generate
    from models.config import get_preset
    from models.tokenizer import load_tokenizer
    cfg = get_preset("cogvlm-tiny")
    tok = load_tokenizer("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(tmp, n=args.n, seed=0, n_test=0, image_size=cfg.eva.image_size[0], progress=False)
        tp = TextProcessor(tok, max_length=cfg.max_sequence_length, image_length=cfg.image_length)
        start = time.perf_counter()
        ds = ItemDataset(ImageProcessor(cfg.eva.image_size[0]), tp, None, str(paths["train"]))
        load_s = time.perf_counter() - start
        collate = DataCollator(tok.pad_token_id)
        print(f"cogvlm-tiny: {len(ds)} samples, {cfg.eva.image_size[0]} px images, image_length {cfg.image_length}, "
              f"max_length {cfg.max_sequence_length}, {torch.get_num_threads()} torch thread(s) in the main process, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"load + validate (parse, paths, tokenise): {load_s:.2f} s = {len(ds) / load_s:.0f} records/s")
        for workers in (0, 2):
            first, steady = throughput(ds, collate, args.batch_size, workers, args.repeats + 1)
            print(f"DataLoader num_workers={workers}, batch {args.batch_size}: {steady:.0f} samples/s steady "
                  f"(median of {args.repeats} epochs); first epoch with start-up {first:.0f} samples/s")
        waste, lengths = padding_waste(ds, collate, args.batch_size)
        mean_len = statistics.mean(lengths)
        print(f"tokens per sample: min {min(lengths)}, mean {mean_len:.1f}, max {max(lengths)}")
        print(f"padding waste, batch {args.batch_size}, pad to longest (file order): {100 * waste:.1f}% of tokens")
        print(f"  for comparison, padding every sample to max_length {cfg.max_sequence_length} (the official "
              f"collator): {100 * (1 - mean_len / cfg.max_sequence_length):.1f}%")


if __name__ == "__main__":
    main()
