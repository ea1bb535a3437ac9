"""Judge-training samples for the synthetic data (`dataset.synth --judge-data FRACTION`): the LLaVA-CoT
judge prompt over two candidate stages of a training item, the right one and a copy with one value
changed (a colour, shape, count, position or letter), answered "Since ..., I choose response K.".

Only the image tells which response is right (both are fluent, one states what is not drawn), so a
model trained on them learns to compare a stage with what it sees, which is what the `self` judge of
staged search asks it to do.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence, Tuple

from .cot_format import LETTERS, parse_stages
from .judge_prompts import HINTS, comparison_prompt
from .synth_scene import COLORS, NUMBER_WORDS, SHAPES

JUDGED_STAGES: Tuple[str, ...] = ("CAPTION", "REASONING", "CONCLUSION")  # the stages that state values
# Words that name a value, by kind: one is swapped for another of its kind to make the wrong response.
VALUE_WORDS: Tuple[Tuple[str, ...], ...] = (
    COLORS, SHAPES, tuple(s + "s" for s in SHAPES), tuple(str(v) for v in range(6)), NUMBER_WORDS[2:],
    ("left", "right", "top", "bottom"), ("above", "below"), ("tallest", "shortest"), LETTERS,
)


def _tokens(text: str) -> List[str]:
    return text.split(" ")


def corrupt(text: str, rng: random.Random) -> Optional[Tuple[str, str, str]]:
    """(text with one value word replaced, the word, its replacement), or None if it names no value.

    Words are matched without trailing punctuation ("1." and "red," count); every occurrence of the
    chosen word is replaced, so the wrong response is consistent with itself."""
    words = _tokens(text)
    found = []
    for i, w in enumerate(words):
        core = w.rstrip(".,")
        for kind in VALUE_WORDS:
            if core in kind and len(kind) > 1:
                found.append((core, kind))
    if not found:
        return None
    word, kind = rng.choice(found)
    other = rng.choice([v for v in kind if v != word])
    out = [other + w[len(word):] if w.rstrip(".,") == word else w for w in words]
    return " ".join(out), word, other


def judge_sample(question: str, tagged_answer: str, rng: random.Random) -> Optional[Dict[str, str]]:
    """{"prompt", "verdict", "stage"} for one item, or None when its chosen stage names no value."""
    stages = parse_stages(tagged_answer)
    name = rng.choice(JUDGED_STAGES)
    right = stages[name]
    wrong = corrupt(right, rng)
    if wrong is None:
        return None
    wrong_text, word, other = wrong
    k = rng.randrange(2)  # the right response is response k + 1
    outputs = [right, wrong_text] if k == 0 else [wrong_text, right]
    hint = "".join(f" {stages[h]} " for h in HINTS.get(name.lower(), ()) if h in stages) or None
    prompt = comparison_prompt(name.lower(), question, outputs, hint)
    verdict = (f"Since response {k + 1} says {word} as the image shows and response {2 - k} says {other}, "
               f"I choose response {k + 1}.")
    return {"prompt": prompt, "verdict": verdict, "stage": name}


def judge_count(n: int, fraction: float) -> int:
    """How many judge samples `--judge-data FRACTION` adds to `n` training items."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"judge-data must be a fraction in [0, 1], got {fraction}")
    return int(round(n * fraction))


def pick_items(n_train: int, count: int, rng_for) -> Sequence[int]:
    """The training items the judge samples are made from (each from its own seeded stream)."""
    return [rng_for(j).randrange(n_train) for j in range(count)]
