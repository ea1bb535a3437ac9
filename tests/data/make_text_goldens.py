"""Write tests/data/official_text_goldens.json: what the OFFICIAL CogVLM text processors make of a fixed
set of cases, tokenized with cogcot's tiny tokenizer. CI compares cogcot's TextProcessor and build_prompt
against this file on every run (tests/test_text_goldens.py), with no CogVLM checkout needed.

Opt-in, run by hand when the cases or the tiny tokenizer change:

    COGVLM_CODE=/path/to/THUDM/CogVLM [COGVLM_COMMIT=sha] python tests/data/make_text_goldens.py

It imports `utils/utils/language.py` from that checkout as it is (nothing of it is copied here) and runs
`llama2_text_processor` (training samples; its `_history_to_prompt` formats, with and without history;
also through a byte-level tokenizer, which keeps every space),
`llama2_text_processor_inference` with its `get_func` positions (inference prompts), and records where the
official truncation puts an EOS. Outputs are stored unpadded (the official pads to max_target_length).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "official_text_goldens.json"
PAD = -7  # a pad id no real token has: the official output is cut where it starts
TEMPLATES = ("base", "chat", "vqa", "chat_old")
WORDS = ("How many red circles are there ? The answer is 3 , left of blue square Options: A. 1 B. 2 "
         "<s> </s> <pad> [INST] Question: Answer: café 7 + 5 = 12 <SUMMARY> </CONCLUSION>").split()


def official_language_module(code: Path):
    """utils/utils/language.py of the checkout, imported on its own (its package __init__ needs more)."""
    try:
        import transformers  # noqa: F401  (it imports LlamaTokenizer at the top; not used here)
    except ImportError:
        stub = types.ModuleType("transformers")
        stub.LlamaTokenizer = None
        sys.modules["transformers"] = stub
    path = code / "utils" / "utils" / "language.py"
    spec = importlib.util.spec_from_file_location("cogvlm_official_language", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OfficialTokenizerView:
    """Our tokenizer with the attributes the official processors read (signal_type = the template)."""

    def __init__(self, tokenizer, signal_type: str):
        self.tokenizer, self.signal_type = tokenizer, signal_type
        self.bos_token_id, self.eos_token_id, self.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, PAD

    def encode(self, text, add_special_tokens=True):
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def tokenizer_fingerprint(tokenizer) -> str:
    pieces = "\n".join(tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size))
    return hashlib.sha256(pieces.encode("utf-8")).hexdigest()


def unpadded_training_sample(out) -> dict:
    ids = out["input_ids"][0].tolist()
    n = ids.index(PAD) if PAD in ids else len(ids)
    sample = {k: out[k][0].tolist()[:n] for k in ("input_ids", "labels", "position_ids", "image_embed_mask",
                                                  "vision_expert_mask", "image_rope_mask")}
    sample["context_length"] = int(out["context_length"][0])
    return sample


def random_text(rng: random.Random, most: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(0, most)))


def training_cases(lang, tokenizer, rng):
    """Each case with the tiny tokenizer (all outputs) and, for short image spans, also with a byte-level
    tokenizer that keeps every character and space (ids, labels and context length)."""
    from tests.helpers import ByteTokenizer
    cases = []

    def run(template, image_length, query, answer, max_target_length=4096, kind="plain"):
        proc = lang.llama2_text_processor(OfficialTokenizerView(tokenizer, template), max_target_length, image_length)
        out = proc(answer, query)
        assert out is not None, (template, query)
        case = {"kind": kind, "template": template, "image_length": image_length,
                "max_target_length": max_target_length, "query": query, "answer": answer,
                "official": unpadded_training_sample(out)}
        if image_length < 64:
            proc = lang.llama2_text_processor(OfficialTokenizerView(ByteTokenizer(), template), max_target_length,
                                              image_length)
            sample = unpadded_training_sample(proc(answer, query))
            case["official_bytes"] = {k: sample[k] for k in ("input_ids", "labels", "context_length")}
        cases.append(case)

    for template in TEMPLATES:
        for image_length in (1, 3, 64):
            for k in range(6 if image_length < 64 else 2):
                query = random_text(rng, 10) + rng.choice(["", " ", "?"])
                run(template, image_length, query, random_text(rng, 12))
        run(template, 3, "", "")  # nothing at all
        run(template, 3, "  What colour?  ", "  red ")  # surrounding spaces are kept as written
    # Multi-turn as the official code writes it: _history_to_prompt with a history, then the processor.
    for template in TEMPLATES:
        for turns in (1, 2, 3):
            history = [(random_text(rng, 6), random_text(rng, 6)) for _ in range(turns)]
            query = random_text(rng, 6)
            prompt = lang._history_to_prompt[template](None, query, history)
            run(template, 3, prompt, random_text(rng, 8), kind="history")
    # Several images, written out with <EOI> (the official prompt form).
    for prompt in ("<EOI>Question: left <EOI> right? Answer:", "<EOI><EOI>Which one? Answer:",
                   "Look: <EOI> and <EOI> then <EOI>. Answer:"):
        run("chat_old", 3, prompt, "the left one", kind="images")
    return cases


def truncation_cases(lang, tokenizer, rng):
    """Long answers under a small max_target_length: the official cuts and appends a trained EOS."""
    cases = []
    for template, image_length, max_target_length in (("chat_old", 3, 40), ("chat", 4, 48), ("vqa", 64, 100)):
        query, answer = "How many red circles are there?", " ".join(rng.choices(WORDS[:20], k=60))
        view = OfficialTokenizerView(tokenizer, template)
        cut = lang.llama2_text_processor(view, max_target_length, image_length)(answer, query)
        full = lang.llama2_text_processor(view, 4096, image_length)(answer, query)
        cases.append({"kind": "truncated", "template": template, "image_length": image_length,
                      "max_target_length": max_target_length, "query": query, "answer": answer,
                      "official": unpadded_training_sample(cut), "official_untruncated": unpadded_training_sample(full)})
    return cases


def inference_cases(lang, tokenizer, rng):
    cases = []
    for template in TEMPLATES:
        for image_length in (1, 3, 64):
            for k in range(4 if image_length < 64 else 1):
                query = random_text(rng, 10).strip() or "What is it?"
                proc = lang.llama2_text_processor_inference(OfficialTokenizerView(tokenizer, template), 4096, image_length)
                out = proc(query)
                _, _, positions = proc.get_func(out["input_ids"], image_rope_mask=out["image_rope_mask"])(
                    out["input_ids"][0])
                official = {k: out[k][0].tolist() for k in ("input_ids", "image_embed_mask", "vision_expert_mask",
                                                            "image_rope_mask")}
                official["position_ids"] = positions[0].tolist()
                cases.append({"template": template, "image_length": image_length, "query": query,
                              "official": official})
    return cases


def commit_of(code: Path) -> str:
    if os.environ.get("COGVLM_COMMIT"):
        return os.environ["COGVLM_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    code = os.environ.get("COGVLM_CODE") or os.environ.get("COGVLM_REPO")  # COGVLM_REPO: as the logits test names it
    if not code or not (Path(code) / "utils" / "utils" / "language.py").is_file():
        print("set COGVLM_CODE to a THUDM/CogVLM checkout (it must hold utils/utils/language.py)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from models.tokenizer import build_tiny_tokenizer  # the tokenizer the tests build (conftest: tiny_tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer(Path(tmp) / "tokenizer.model")
        lang = official_language_module(Path(code))
        rng = random.Random(20240207)
        goldens = {
            "about": "Outputs of THUDM/CogVLM's official text processors on these cases with cogcot's tiny "
                     "tokenizer, written by tests/data/make_text_goldens.py; checked by tests/test_text_goldens.py.",
            "official": {"repo": "THUDM/CogVLM", "file": "utils/utils/language.py", "commit": commit_of(Path(code))},
            "tokenizer": {"builder": "models.tokenizer.build_tiny_tokenizer", "vocab_size": tokenizer.vocab_size,
                          "sha256_of_pieces": tokenizer_fingerprint(tokenizer)},
            "training": training_cases(lang, tokenizer, rng),
            "truncated": truncation_cases(lang, tokenizer, rng),
            "inference": inference_cases(lang, tokenizer, rng),
        }
    # One case per line: small diffs when a case changes.
    lines = ["{"]
    for i, (key, value) in enumerate(goldens.items()):
        comma = "," if i < len(goldens) - 1 else ""
        if isinstance(value, list):
            body = ",\n".join("  " + json.dumps(case, ensure_ascii=False, separators=(",", ":")) for case in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = {k: len(v) for k, v in goldens.items() if isinstance(v, list)}
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
