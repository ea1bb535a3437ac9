"""The LLaVA-CoT four-stage answer format, in one place: the stage tags and their order, writing and
parsing a reply, the conclusion, how options are written into a question, and reading an option back.

Training data (`dataset.synth`, the teacher), staged search (`inference.options`/`search`/`judges`) and
evaluation (`inference.evaluate`) all use these, so what a model is trained to write is what is read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# ----------------------------------------------------------------------------- the stages

STAGE_NAMES: Tuple[str, ...] = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")


@dataclass(frozen=True)
class StageSpec:
    """One stage of the structured answer: its name and the tags around it."""
    name: str
    start: str
    end: str

    @classmethod
    def tagged(cls, name: str) -> "StageSpec":
        return cls(name, f"<{name}>", f"</{name}>")


DEFAULT_STAGES: Tuple[StageSpec, ...] = tuple(StageSpec.tagged(n) for n in STAGE_NAMES)
CONCLUSION: StageSpec = DEFAULT_STAGES[-1]
# Every tag in answer order: <SUMMARY>, </SUMMARY>, <CAPTION>, ..., </CONCLUSION>.
STAGE_TAGS: Tuple[str, ...] = tuple(tag for s in DEFAULT_STAGES for tag in (s.start, s.end))


def four_stage(summary: str, caption: str, reasoning: str, conclusion: str) -> str:
    """A reply in the four-stage format, each stage's text inside its tags, one space around each."""
    texts = (summary, caption, reasoning, conclusion)
    return " ".join(f"{s.start} {t} {s.end}" for s, t in zip(DEFAULT_STAGES, texts))


# ----------------------------------------------------------------------------- parsing a reply

def stage_text(text: str, stage: StageSpec) -> Optional[str]:
    """The text between the stage's first start tag and the next end tag (to the end of `text` when
    the end tag is missing); None when the start tag is absent. Not stripped."""
    m = re.search(re.escape(stage.start) + r"(.*?)" + re.escape(stage.end), text, re.DOTALL)
    if m:
        return m.group(1)
    i = text.find(stage.start)
    return text[i + len(stage.start):] if i >= 0 else None


def parse_stages(text: str, stages: Sequence[StageSpec] = DEFAULT_STAGES) -> Dict[str, str]:
    """{stage name: its stripped text} for the stages whose start tag is in `text`, in `stages` order."""
    found = {}
    for s in stages:
        body = stage_text(text, s)
        if body is not None:
            found[s.name] = body.strip()
    return found


def format_problems(text: str, stages: Sequence[StageSpec] = DEFAULT_STAGES) -> List[str]:
    """What keeps `text` from being a well-formed staged reply: a missing, repeated or unclosed stage,
    or stages out of order (each problem as one sentence naming the tag). Empty when well formed."""
    problems, starts = [], []
    for s in stages:
        n_start, n_end = text.count(s.start), text.count(s.end)
        if n_start == 0:
            problems.append(f"missing {s.start}")
            continue
        if n_start > 1:
            problems.append(f"{s.start} appears {n_start} times")
        if n_end == 0:
            problems.append(f"{s.start} is not closed by {s.end}")
        elif n_end > 1:
            problems.append(f"{s.end} appears {n_end} times")
        elif text.find(s.end) < text.find(s.start):
            problems.append(f"{s.end} comes before {s.start}")
        starts.append((text.find(s.start), s))
    in_text = [s.name for _, s in sorted(starts, key=lambda p: p[0])]
    expected = [s.name for s in stages if s.name in in_text]
    if in_text != expected:
        problems.append(f"stages out of order: {' '.join(in_text)} (expected {' '.join(expected)})")
    return problems


def extract_conclusion(response: str, stage: StageSpec = CONCLUSION) -> str:
    """The text of the LAST conclusion stage (to the end when unclosed), stripped; the whole response
    stripped when it has no conclusion tag (a model that answers plainly is still scored)."""
    pattern = re.compile(re.escape(stage.start) + r"(.*?)(?:" + re.escape(stage.end) + r"|$)", re.S)
    found = pattern.findall(response)
    return (found[-1] if found else response).strip()


# ----------------------------------------------------------------------------- options in a question

LETTERS: Tuple[str, ...] = ("A", "B", "C", "D")  # the option letters a question lists, in order


def format_options(options: Mapping[str, str]) -> str:
    """``"Options: A. x B. y C. z D. w"`` for the letters present (non-empty) in `options`."""
    parts = [f"{k}. {options[k]}" for k in LETTERS if k in options and str(options[k]).strip() != ""]
    return "Options: " + " ".join(parts)


def tsv_row_to_prompt(row: Mapping[str, Any]) -> str:
    """The question text of a VLMEvalKit-style row: ``question + "\\nOptions: A. .. B. .. C. .. D. .."``.

    `row` is any mapping with ``question`` and the option columns (a ``csv.DictReader`` row, a
    pandas row as dict); training prompts and evaluation prompts are both built with it.
    Option values are taken as strings; NaN/None/empty options are skipped.
    """
    opts = {}
    for k in LETTERS:
        v = row.get(k)
        if v is None or (isinstance(v, float) and v != v):  # None or NaN (pandas empty cell)
            continue
        opts[k] = str(v)
    return f"{row['question']}\n" + format_options(opts)


# ----------------------------------------------------------------------------- reading an option back

_BARE_LETTER = re.compile(r"[\(\[]?\s*([A-Z])\s*[\)\]]?[\.:]?")  # "B", "(B)", "[B]", "B.", "B:"
_NAMED_LETTER = re.compile(r"(?:option|answer(?:\s+is)?|choice)\s*[:\-]?\s*[\(\[]?([A-Z])\b", re.I)
_LEADING_LETTER = re.compile(r"[\(\[]?([A-Z])[\)\]\.:]\s")  # "B. blue", "(B) blue"


def match_option(text: str, options: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """(letter, how) for the option `text` names: a bare letter, "option B"/"answer is B", "B." at the
    start, an option's text, or a lone standalone letter; (None, "none") when unclear."""
    letters = set(options)
    t = text.strip()
    m = _BARE_LETTER.fullmatch(t)
    if m and m.group(1) in letters:
        return m.group(1), "letter"
    found = [x for x in _NAMED_LETTER.findall(t) if x in letters]
    if found:
        return found[-1], "letter"
    m = _LEADING_LETTER.match(t)
    if m and m.group(1) in letters:
        return m.group(1), "letter"
    lower = t.lower()
    hits = {k for k, v in options.items() if re.search(r"(?<!\w)" + re.escape(str(v).strip().lower()) + r"(?!\w)",
                                                       lower)}
    # drop options whose text is inside another hit's text ("red" inside "dark red")
    hits = {k for k in hits if not any(k != o and str(options[k]).lower() in str(options[o]).lower() for o in hits)}
    if len(hits) == 1:
        return hits.pop(), "text"
    standalone = {x for x in re.findall(r"(?<![\w'])([A-Z])(?![\w'])", t) if x in letters}
    standalone -= {"A"} if re.search(r"(?<![\w'])A\s+[a-z]", t) else set()  # the article, not option A
    if len(standalone) == 1:
        return standalone.pop(), "letter"
    return None, "none"


def predict(response: str, options: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """(letter, how) from the response's conclusion; a letter named plainly ("E", "the answer is E")
    that is not among the options comes back as (letter, "not_an_option")."""
    conclusion = extract_conclusion(response)
    letter, how = match_option(conclusion, options)
    if letter is None:
        t = conclusion.strip()
        bare = _BARE_LETTER.fullmatch(t)
        named = [bare.group(1)] if bare else _NAMED_LETTER.findall(t)
        if named and named[-1] not in options:
            return named[-1], "not_an_option"
    return letter, how
