"""Small frozen option objects for generation and staged search (whisper `DecodingOptions` style).

Options only describe *what* to do; the code that does it lives in `generation` (token loop),
`search` (staged search) and `judges` (pairwise judgments).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from dataset.cot_format import DEFAULT_STAGES, StageSpec  # noqa: F401  (the format's home; re-exported)


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is drawn. The defaults are greedy decoding and say so (temperature 0, no
    top-p or top-k filter); setting a temperature > 0 alone samples from the whole distribution.

    temperature <= 0 or top_k == 1 means greedy; top_k = 0 and top_p = 1 switch those filters off.
    `seed` makes sampling reproducible: every sampled row has its own `torch.Generator`.
    The official CogVLM CLI demo's settings are `OFFICIAL_DEMO_SAMPLING` (greedy too: its top_k is 1).
    """
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    seed: Optional[int] = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1

    def replace(self, **changes) -> "SamplingOptions":
        return replace(self, **changes)


GREEDY = SamplingOptions()  # the defaults: argmax at every step
# The official CogVLM cli_demo's values. Its top_k=1 keeps only the most likely token, so despite the
# temperature and top_p it decodes greedily; kept for replicating that demo exactly.
OFFICIAL_DEMO_SAMPLING = SamplingOptions(temperature=0.8, top_p=0.4, top_k=1)
# The LLaVA-CoT reference samples candidates (and judge outputs) with temperature 0.6, top_p 0.9.
REFERENCE_SAMPLING = SamplingOptions(temperature=0.6, top_p=0.9, top_k=0)


SEARCH_MODES = ("stage", "best_of_n", "sentence")


@dataclass(frozen=True)
class SearchOptions:
    """Staged search (LLaVA-CoT): `n` candidates per step, a knockout tournament keeps one.

    mode: `stage` (a step per stage, candidates stop at the stage's end tag), `best_of_n` (one step:
    whole answers, stop at the last stage's end tag) or `sentence` (steps stop at a sentence end).
    max_step_tokens caps one candidate of one step; max_new_tokens caps the whole answer.
    judge_sampling: how a model judge (`self`) samples its verdict (the reference samples it too).
    reference=True runs the procedure like the reference code: one candidate at a time, image and
    prefix re-encoded for every candidate and every judge call (for comparisons; same choices).
    greedy_candidate=True makes candidate 0 of every step the greedy continuation (the others are
    sampled as before), so the judge can always keep what greedy decoding would have written.
    """
    mode: str = "stage"
    n: int = 4
    stages: Tuple[StageSpec, ...] = DEFAULT_STAGES
    sampling: SamplingOptions = REFERENCE_SAMPLING
    max_step_tokens: int = 256
    max_new_tokens: int = 1024
    max_steps: int = 64  # sentence mode: at most this many sentences
    sentence_ends: Tuple[str, ...] = (".",)
    judge_sampling: SamplingOptions = REFERENCE_SAMPLING.replace(max_new_tokens=128)
    seed: int = 0
    reference: bool = False
    greedy_candidate: bool = False

    def __post_init__(self):
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {self.mode!r}; choose from {', '.join(SEARCH_MODES)}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not self.stages:
            raise ValueError("at least one stage is needed")

    def replace(self, **changes) -> "SearchOptions":
        return replace(self, **changes)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, stable across runs and machines."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
