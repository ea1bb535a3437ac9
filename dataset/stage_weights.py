"""Per-stage loss weights: each trained token of an answer is weighted by the LLaVA-CoT stage it belongs to.

`--stage-loss-weights SUMMARY=0.5,CAPTION=1,REASONING=1,CONCLUSION=2` parses to a dict; a stage's tags
belong to it; tokens outside the four stages (the spaces between them, EOS) weigh 1. The training loss is
the weighted mean (sum of w * cross-entropy / sum of w), so all-ones weights give exactly the plain loss.
Tokens are matched to stages by where their text ends in the decoded answer, so tags that a tokenizer
splits into several pieces (Vicuna's) are handled as well as the tiny tokenizer's single-token tags.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .cot_format import DEFAULT_STAGES, STAGE_NAMES
from .weight_spec import parse_weight_spec


def parse_stage_weights(spec: Optional[str]) -> Optional[Dict[str, float]]:
    """"SUMMARY=0.5,CAPTION=1" -> {"SUMMARY": 0.5, "CAPTION": 1.0}; stages not named weigh 1.

    None or "" -> None (no weighting). Raises ValueError naming the bad part."""
    weights = parse_weight_spec(spec, "stage loss weight", "STAGE", STAGE_NAMES,
                                normalise=lambda name: name.strip().strip("<>/").upper())
    if weights is None:
        return None
    return {name: weights.get(name, 1.0) for name in STAGE_NAMES}


def format_stage_weights(weights: Mapping[str, float]) -> str:
    return ",".join(f"{name}={weights[name]:g}" for name in STAGE_NAMES)


def stage_spans(text: str) -> List[Tuple[int, int, str]]:
    """(first char, end char (exclusive), stage) of each stage in `text`, start tag to end tag included.
    A stage whose end tag is missing runs to the end of the text."""
    spans = []
    for stage in DEFAULT_STAGES:
        for m in re.finditer(re.escape(stage.start), text):
            end = text.find(stage.end, m.end())
            stop = len(text) if end < 0 else end + len(stage.end)
            spans.append((m.start(), stop, stage.name))
    return sorted(spans)


def token_stages(tokenizer, ids: Sequence[int]) -> List[Optional[str]]:
    """The stage of each token of one answer's `ids` (None outside the stages).

    Token i belongs to the stage whose characters contain the last character of its text, i.e.
    len(decode(ids[:i+1])) lies in (span start, span end]; the boundaries are found by bisection on the
    decoded prefix length (a handful of decodes per stage, not one per token)."""
    ids = list(ids)
    if not ids:
        return []
    text = tokenizer.decode(ids)
    spans = stage_spans(text)
    out: List[Optional[str]] = [None] * len(ids)
    cache: Dict[int, int] = {}

    def ends_at(j: int) -> int:  # characters decoded from the first j tokens
        if j not in cache:
            cache[j] = len(tokenizer.decode(ids[:j])) if j else 0
        return cache[j]

    def first(pred) -> int:  # the smallest j in [0, n] with pred(ends_at(j)), n + 1 if none
        lo, hi = 0, len(ids) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if mid <= len(ids) and pred(ends_at(mid)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    for start, stop, name in spans:
        lo = first(lambda c: c > start)  # token lo - 1 is the first whose text ends inside the span
        hi = first(lambda c: c > stop)  # token hi - 1 is the first whose text ends past it
        for i in range(max(lo - 1, 0), min(hi - 1, len(ids))):
            out[i] = name
    return out

