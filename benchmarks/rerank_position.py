"""Can a judge built on the model's own probabilities fix its position answers? For every held-out
position question of a synthetic test set, the four complete answers (one per option, written as the
generator writes them) are scored by the trained checkpoint with the question's image and with a blank
image, and the option picked three ways is checked:

- log-probability: the answer the model finds most likely with the image (what the `logprob` judge does);
- PMI: log p(answer | image) - log p(answer | blank image), how much the image raises it (a contrastive judge);
- both: 2 log p(answer | image) - log p(answer | blank image).

    python benchmarks/rerank_position.py --from_pretrained CKPT --data data/<synth>   # the folder with test.jsonl
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def answers(question: str, reference: str):
    """The four options' answers in the generator's own words (`dataset.synth_items`), in option order."""
    from dataset.synth_items import RELATIONS, SIDES, relation_stages, side_stages
    one = re.search(r"Where is the (\w+) in the image\?", question)
    if one:
        color = re.search(r"one (\w+) \w+", reference).group(1)
        name = f"{color} {one.group(1)}"
        return [side_stages(name, where, letter).write("tagged") for letter, where in zip("ABCD", SIDES)]
    a, b = re.search(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", question).groups()
    return [relation_stages(a, b, rel, letter).write("tagged") for letter, rel in zip("ABCD", RELATIONS)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from_pretrained", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="synthetic data folder (test.jsonl and images/)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch
    from PIL import Image

    from dataset import DataCollator, ImageProcessor, ItemDataset, TextProcessor
    from finetune.data import split_labelled
    from inference.model_args import load_model
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tokenizer, template = load_model(argparse.Namespace(from_pretrained=a.from_pretrained, tokenizer=None,
                                                               template=None, device="cpu", bf16=False, fp16=False,
                                                               model_seed=0))
    size = list(model.args.eva_args["image_size"])
    texts = TextProcessor(tokenizer, max_length=1024, image_length=model.args.image_length, template=template)
    images, collate = ImageProcessor(size), DataCollator(pad_token_id=tokenizer.pad_token_id)
    data = Path(a.data)
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    records = [r for r in records if r["category"] == "position"]
    if not records:
        print(f"{data / 'test.jsonl'}: no position questions", file=sys.stderr)
        return 2
    right = {"log-probability": 0, "PMI": 0, "both": 0}
    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", tuple(size), (245, 245, 245)).save(Path(tmp) / "blank.png")
        for r in records:
            shutil.copy(data / r["image"], Path(tmp) / "image.png")
            question = r["conversations"][0]
            lines = [json.dumps({"id": f"{r['id']}-{k}-{img}", "image": f"{img}.png",
                                 "conversations": [question, {"from": "gpt", "value": text}]})
                     for k, text in enumerate(answers(question["value"], r["conversations"][1]["value"]))
                     for img in ("image", "blank")]
            (Path(tmp) / "options.jsonl").write_text("\n".join(lines) + "\n")
            ds = ItemDataset(images, texts, None, str(Path(tmp) / "options.jsonl"))
            batch = collate([ds[i] for i in range(len(ds))])
            inputs, targets, _ = split_labelled(batch, "cpu")
            with torch.no_grad():
                logits = model(**inputs)[0]  # [labelled tokens of all 8 answers, V]
            token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]
            per_answer = [float(x.sum()) for x in torch.split(token_lp, (batch["labels"] != -100).sum(1).tolist())]
            with_image, blank = per_answer[0::2], per_answer[1::2]
            gold = "ABCD".index(r["answer"])
            scores = {"log-probability": with_image,
                      "PMI": [x - y for x, y in zip(with_image, blank)],
                      "both": [2 * x - y for x, y in zip(with_image, blank)]}
            for name, s in scores.items():
                right[name] += max(range(4), key=s.__getitem__) == gold
    n = len(records)
    for name, k in right.items():
        print(f"{name:<28} {k:>3}/{n} right ({100 * k / n:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
