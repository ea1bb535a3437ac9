"""Padded vs packed training at the same samples, on cogvlm-tiny: padding waste, trained tokens/s and
samples/s; and the lean training step against the dense-mask, full-logits step it replaced.

    python benchmarks/packing.py [--n 48] [--batch-size 8] [--max-length 1024] [--repeats 3]

Data: `dataset.synth` items (the default training data) and a mixed-length corpus (captions of 10-500
text tokens with one image, interleaved documents with 1-3 images). Each measured pass runs forward and
backward over every sample once; padded and packed passes alternate, the median is reported. The last
line is one JSON object: {"synthetic": {"waste_padded", "waste_packed", "speedup", ...}, "mixed": {...}}
(waste = pad tokens / all tokens; speedup = packed trained tokens/s over padded).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset import DataCollator, ImageProcessor, ItemDataset, TextProcessor, attention_mask_from_segments, vision_inputs  # noqa: E402
from dataset.packing import PackedDataset  # noqa: E402
from dataset.text_processor import Encoded  # noqa: E402
from finetune.data import split_batch, split_labelled  # noqa: E402
from finetune.step import selected_token_loss, token_loss  # noqa: E402


def synthetic_samples(n: int, tokenizer, config, max_length: int):
    from dataset import synth
    out = tempfile.mkdtemp(prefix="cogcot-pack-")
    synth.generate(out, n=n, seed=3, n_test=1, progress=False)
    tp = TextProcessor(tokenizer, max_length=max_length, image_length=config.image_length)
    ds = ItemDataset(ImageProcessor(config.eva.image_size), tp, None, os.path.join(out, "train.jsonl"))
    return [ds[i] for i in range(len(ds))]


def mixed_samples(n: int, tokenizer, config, max_length: int, seed: int = 0):
    """Captions (one image, 10-500 trained text tokens) and documents (1-3 images between text runs)."""
    rng = random.Random(seed)
    tp = TextProcessor(tokenizer, max_length=max_length, image_length=config.image_length)
    g = torch.Generator().manual_seed(seed)
    size = config.eva.image_size
    samples = []
    for i in range(n):
        enc = Encoded()
        enc.add_tokens([tokenizer.bos_token_id], trained=False)
        images = 1 if i % 2 == 0 else rng.randint(1, 3)
        budget = max_length - 2 - images * (config.image_length + 2)
        text = rng.randint(10, min(500, budget))
        runs = [text // images] * images
        for run in runs:
            enc.add_image(config.image_length)
            enc.add_tokens([rng.randrange(3, tokenizer.vocab_size) for _ in range(run)], trained=True)
        enc.add_tokens([tokenizer.eos_token_id], trained=True)
        sample = tp.to_tensors(enc)
        sample["vision"] = vision_inputs(torch.randn(images, 3, size[0], size[1], generator=g))
        samples.append(sample)
    return samples


def waste(batches) -> float:
    pad = sum(int((b["segment_ids"] == 0).sum()) for b in batches)
    return pad / sum(b["segment_ids"].numel() for b in batches)


def train_pass(model, batches, lean: bool = True) -> float:
    """Seconds for forward + backward over `batches` (lean: this project's step; else the old one)."""
    start = time.perf_counter()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        if lean:
            inputs, targets, _ = split_labelled(batch, "cpu")
            loss_sum, count = selected_token_loss(model(**inputs)[0], targets)
        else:  # the step before: a dense [B,1,n,n] mask and logits at every position
            inputs, labels = split_batch(batch, "cpu")
            inputs["attention_mask"] = attention_mask_from_segments(batch["segment_ids"])
            loss_sum, count = token_loss(model(**inputs)[0], labels)
        (loss_sum / count).backward()
    return time.perf_counter() - start


def compare(name, model, samples, batch_size: int, max_length: int, repeats: int, step_too: bool):
    order = list(range(len(samples)))
    random.Random(1).shuffle(order)
    padded = [DataCollator()([samples[i] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size)]
    packed_ds = PackedDataset(samples, max_length=max_length, seed=1)
    mean_len = sum(packed_ds.lengths) / len(samples)
    rows_per_batch = max(1, round(batch_size * mean_len / max_length))  # about the same real tokens per step
    rows = [packed_ds[i] for i in range(len(packed_ds))]
    packed = [DataCollator()(rows[k:k + rows_per_batch]) for k in range(0, len(rows), rows_per_batch)]
    trained = sum(int((s["labels"][1:] != -100).sum()) for s in samples)
    times = {"padded": [], "packed": [], "old_step": []}
    train_pass(model, padded[:1])  # warm-up
    for _ in tqdm(range(repeats), desc=name, leave=False):
        times["padded"].append(train_pass(model, padded))
        times["packed"].append(train_pass(model, packed))
        if step_too:
            times["old_step"].append(train_pass(model, padded, lean=False))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    out = {"samples": len(samples), "rows": len(rows), "padded_batches": len(padded), "packed_batches": len(packed),
           "waste_padded": round(waste(padded), 4), "waste_packed": round(waste(packed), 4),
           "padded_trained_tok_s": round(trained / med["padded"], 1),
           "packed_trained_tok_s": round(trained / med["packed"], 1),
           "padded_samples_s": round(len(samples) / med["padded"], 2),
           "packed_samples_s": round(len(samples) / med["packed"], 2),
           "speedup": round(med["padded"] / med["packed"], 3)}
    if step_too:
        out["old_step_samples_s"] = round(len(samples) / med["old_step"], 2)
        out["lean_step_speedup"] = round(med["old_step"] / med["padded"], 3)
    print(f"[{name}] waste padded {100 * out['waste_padded']:.1f}% -> packed {100 * out['waste_packed']:.1f}%; "
          f"trained tok/s {out['padded_trained_tok_s']} -> {out['packed_trained_tok_s']} (x{out['speedup']}); "
          f"samples/s {out['padded_samples_s']} -> {out['packed_samples_s']}"
          + (f"; old step {out['old_step_samples_s']} samples/s, lean step x{out['lean_step_speedup']}" if step_too else ""),
          flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=48, help="samples per corpus")
    p.add_argument("--batch-size", type=int, default=8, help="samples per padded batch")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per packed row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from models.cogvlm import CogVLMModel
    from models.config import get_preset
    from models.tokenizer import tokenizer_for
    config = get_preset("cogvlm-tiny")
    torch.manual_seed(0)
    model, margs = CogVLMModel.from_pretrained("cogvlm-tiny")
    model = model.eval()  # eval: no dropout; gradients still flow
    tokenizer = tokenizer_for("cogvlm-tiny", margs.tokenizer_type)
    print(f"[setup] cogvlm-tiny fp32 on {torch.get_num_threads()} thread(s); load {open('/proc/loadavg').read().split()[:3]}",
          flush=True)
    result = {
        "synthetic": compare("synthetic", model, synthetic_samples(args.n, tokenizer, config, args.max_length),
                             args.batch_size, args.max_length, args.repeats, step_too=True),
        "mixed": compare("mixed", model, mixed_samples(args.n, tokenizer, config, args.max_length),
                         args.batch_size, args.max_length, args.repeats, step_too=False),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
