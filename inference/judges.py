"""Pairwise judges for staged search: which of two candidates is better.

- `LogprobJudge` ("logprob"): the higher mean token log-probability under the model wins (recorded
  while sampling, so it costs no forward pass).
- `SelfJudge` ("self"): the model itself answers the LLaVA-CoT judge prompts (stage-specific, "Since
  [reason], I choose response [1/2]."), with the extra correct/incorrect check of the reasoning stage.
- `ApiJudge` ("api"): the same prompts sent to an OpenAI-compatible chat endpoint.
- `ConsistencyJudge` ("consistency", inference/consistency_judge.py): each candidate is continued
  greedily to a conclusion; the one that reaches the majority conclusion wins.

A verdict that cannot be parsed (a small or untrained model writes anything) falls back, always the
same way, to the mean log-probability comparison; the fallback is logged and marked in the verdict.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

from dataset.api_client import ApiClient, ApiError, EndpointDown, image_part, text_part
from dataset.cot_format import stage_text
# The LLaVA-CoT judge prompts live in dataset/judge_prompts.py (training data uses the same words).
from dataset.judge_prompts import HINTS as _HINTS, PROMPTS, REASONING_CHECK  # noqa: F401
from dataset.judge_prompts import comparison_prompt, reasoning_check_prompt

from .options import StageSpec, derive_seed

log = logging.getLogger(__name__)



@dataclass
class Candidate:
    """One candidate continuation of a search step."""
    index: int
    tokens: List[int]
    text: str  # this step's text
    answer_text: str  # the answer so far with this candidate appended (what the reference judges)
    finish: str
    logprobs: List[float] = field(default_factory=list)
    row: object = None  # the generation row (cache for commit in the fast mode)

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")


@dataclass(frozen=True)
class Verdict:
    """winner: 0 = the first candidate of the pair, 1 = the second."""
    winner: int
    reason: str
    raw: str = ""
    fallback: bool = False


@dataclass
class Match:
    """What a judge may use for one judgment. `ask(query, with_image, seed)` runs the searched model on
    a judge prompt (reusing its cached image prefix in the fast mode) and returns the text; `ask_many`
    does that for several prompts at once."""
    question: str
    kind: str  # summary | caption | reasoning | conclusion | all | sentence | a custom stage name, lower case
    stage: Optional[StageSpec]
    stages: Sequence[StageSpec]
    previous: str  # the answer text before this step
    seed: int  # this judgment's seed
    step_seed: int = 0  # the step's seed (per-candidate checks are seeded from it: the same in every match)
    image: object = None  # the PIL image (for the api judge)
    ask: Optional[Callable[[str, bool, int], str]] = None
    # several (query, with_image, seed) at once -> their texts; the fast search decodes them as one batch
    ask_many: Optional[Callable[[Sequence[Tuple[str, bool, int]]], List[str]]] = None
    candidates: Sequence["Candidate"] = ()  # every candidate of this step (the pair is two of them)
    # token lists -> greedy continuations of the answer so far followed by each, to the last end tag
    complete_many: Optional[Callable[[Sequence[Sequence[int]]], List[str]]] = None


class Judge:
    name = "judge"

    def __call__(self, match: Match, a: Candidate, b: Candidate) -> Verdict:
        raise NotImplementedError

    def judge_many(self, items: Sequence[Tuple[Match, Candidate, Candidate]]) -> List[Verdict]:
        """Independent judgments (the matches of one tournament round); by default one after another."""
        return [self(m, a, b) for m, a, b in items]


class LogprobJudge(Judge):
    """Keeps the candidate with the higher mean token log-probability (ties: the first)."""
    name = "logprob"

    def __call__(self, match: Match, a: Candidate, b: Candidate) -> Verdict:
        return logprob_verdict(a, b)


def logprob_verdict(a: Candidate, b: Candidate, prefix: str = "", raw: str = "", fallback: bool = False) -> Verdict:
    la, lb = a.mean_logprob, b.mean_logprob
    return Verdict(0 if la >= lb else 1, f"{prefix}mean log-prob {la:.4f} vs {lb:.4f}", raw, fallback)


tag_content = stage_text  # the stage's text in a reply: dataset.cot_format.stage_text


def judged_texts(match: Match, a: Candidate, b: Candidate) -> Tuple[List[str], Optional[str]]:
    """The two texts a prompt judge compares and the hint, following the reference judge."""
    if match.kind == "all":
        return [a.answer_text, b.answer_text], None
    if match.kind == "sentence":
        return [a.text.strip(), b.text.strip()], (match.previous.strip() or None)
    stage = match.stage
    outs = []
    for c in (a, b):
        content = tag_content(c.answer_text, stage) if stage is not None else None
        outs.append((content if content is not None else c.text).strip())
    by_name = {s.name: s for s in match.stages}
    hint_parts = [tag_content(match.previous, by_name[n]) for n in _HINTS.get(match.kind, ()) if n in by_name]
    hint = "".join(p for p in hint_parts if p) or None
    return outs, hint


def judge_query(match: Match, outputs: Sequence[str], hint: Optional[str]) -> str:
    """The comparison prompt of the reference judge for this match (dataset.judge_prompts)."""
    return comparison_prompt(match.kind, match.question, outputs, hint)


def reasoning_check_query(hint: Optional[str], reasoning: str) -> str:
    return reasoning_check_prompt(hint, reasoning)


_CHOICE = re.compile(r"choose\s+(?:the\s+)?(?:response|answer|text|option)?\s*\[?\s*#?\s*([12])(?![0-9])", re.I)
_MENTION = re.compile(r"(?:response|text)\s*\[?\s*#?\s*([12])(?![0-9])", re.I)
_REASON = re.compile(r"since\s+(.*?)\s*,?\s*I\s+choose", re.I | re.S)


def parse_verdict(text: str) -> Tuple[Optional[int], str]:
    """(0 for response 1, 1 for response 2, or None when unclear; the reason) from a judge's output.

    Accepts the asked format ("Since ..., I choose response 2."), "I choose 1", a lone mention of one
    response, or a bare "1"/"2"; anything else is unclear.
    """
    m = list(_CHOICE.finditer(text))
    reason = _REASON.search(text)
    reason = reason.group(1).strip() if reason else text.strip()[:300]
    if m:
        return int(m[-1].group(1)) - 1, reason
    mentioned = {g for g in _MENTION.findall(text)}
    if len(mentioned) == 1:
        return int(mentioned.pop()) - 1, reason
    bare = text.strip().strip(".").strip()
    if bare in ("1", "2"):
        return int(bare) - 1, reason
    return None, reason


def is_incorrect(text: str) -> bool:
    """The reasoning check's answer: 'incorrect' anywhere (as the reference tests it), case-insensitive."""
    return re.search(r"incorrect", text, re.I) is not None


class JudgeError(RuntimeError):
    """A judge backend failed (e.g. the API after all retries)."""


class JudgeUnavailable(JudgeError):
    """The judge backend is known to be down: judgments fall back at once (warned about once, elsewhere)."""


class PromptJudge(Judge):
    """Judges by asking a model the LLaVA-CoT judge prompts; subclasses say how a prompt is answered.

    As in the reference, the reasoning stage first checks each response alone ("correct"/"incorrect":
    an incorrect first response loses, else an incorrect second one), then compares the two. The checks
    are seeded per candidate, so a candidate gets the same check in every match.
    """

    def ask(self, match: Match, query: str, with_image: bool, seed: int) -> str:
        raise NotImplementedError

    def ask_many(self, match: Match, requests: Sequence[Tuple[str, bool, int]]) -> List[str]:
        return [self.ask(match, q, img, seed) for q, img, seed in requests]

    def __call__(self, match: Match, a: Candidate, b: Candidate) -> Verdict:
        return self.judge_many([(match, a, b)])[0]

    def judge_many(self, items: Sequence[Tuple[Match, Candidate, Candidate]]) -> List[Verdict]:
        if not items:
            return []
        first = items[0][0]
        texts = [judged_texts(m, a, b) for m, a, b in items]
        verdicts: List[Optional[Verdict]] = [None] * len(items)
        try:
            checks = {}  # the reasoning checks of every match of the round, asked together
            for i, (m, a, b) in enumerate(items):
                if m.kind == "reasoning":
                    outs, hint = texts[i]
                    for cand, out in zip((a, b), outs):
                        checks[(i, cand.index)] = (reasoning_check_query(hint, out), False,
                                                   derive_seed(m.step_seed, "check", cand.index))
            answers = dict(zip(checks, self.ask_many(first, list(checks.values())))) if checks else {}
            for i, (m, a, b) in enumerate(items):
                for k, cand in enumerate((a, b)):
                    check = answers.get((i, cand.index))
                    if check is not None and is_incorrect(check):
                        verdicts[i] = Verdict(1 - k, f"response {k + 1} was judged incorrect", check)
                        break
            todo = [i for i, v in enumerate(verdicts) if v is None]
            raws = self.ask_many(first, [(judge_query(items[i][0], *texts[i]), True,
                                          derive_seed(items[i][0].seed, "judge")) for i in todo])
        except JudgeError as e:
            (log.debug if isinstance(e, JudgeUnavailable) else log.warning)(
                "%s judge failed (%s); falling back to mean log-prob", self.name, e)
            return [v if v is not None else logprob_verdict(a, b, f"{self.name} judge failed ({e}); fell back to ",
                                                            "", True)
                    for v, (_, a, b) in zip(verdicts, items)]
        for i, raw in zip(todo, raws):
            _, a, b = items[i]
            winner, reason = parse_verdict(raw)
            if winner is None:
                log.info("%s judge verdict unclear (%r); falling back to mean log-prob", self.name, raw[:80])
                verdicts[i] = logprob_verdict(a, b, "verdict unclear; fell back to ", raw, True)
            else:
                verdicts[i] = Verdict(winner, reason, raw)
        return verdicts


class SelfJudge(PromptJudge):
    """The searched model judges its own candidates (prompts run through `match.ask`)."""
    name = "self"

    def ask(self, match: Match, query: str, with_image: bool, seed: int) -> str:
        if match.ask is None:
            raise JudgeError("the self judge needs the search to provide the model (match.ask)")
        return match.ask(query, with_image, seed)

    def ask_many(self, match: Match, requests: Sequence[Tuple[str, bool, int]]) -> List[str]:
        if match.ask_many is not None:
            return match.ask_many(requests)
        return super().ask_many(match, requests)


class ApiJudge(PromptJudge):
    """An OpenAI-compatible chat-completions endpoint answers the judge prompts, through
    `dataset.api_client` (the project's one HTTP client).

    base_url: e.g. "https://api.openai.com/v1"; model: the model name; the key is read from the
    environment variable `api_key_env`. `timeout` is a deadline per request; 429 (Retry-After), 5xx and
    transport errors are retried `retries` times with backoff; a judgment whose request fails falls back
    (logged). After `down_after` failed requests in a row the endpoint is treated as down: every later
    judgment falls back at once, marked, without a request (the client warns once).
    """
    name = "api"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, max_tokens: int = 256, temperature: float = 0.0,
                 send_image: bool = True, down_after: int = 3):
        self.client = ApiClient(base_url, model, api_key_env=api_key_env, timeout=timeout, attempts=retries + 1,
                                backoff=backoff, down_after=down_after)
        self.max_tokens, self.temperature, self.send_image = max_tokens, temperature, send_image

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (retries included)."""
        return self.client.requests

    def ask(self, match: Match, query: str, with_image: bool, seed: int) -> str:
        content = [text_part(query)]
        if with_image and self.send_image and match.image is not None:
            content.append(image_part(match.image))
        try:
            return self.client.chat(content, max_tokens=self.max_tokens, temperature=self.temperature, seed=seed).text
        except EndpointDown as e:
            raise JudgeUnavailable(str(e)) from None
        except ApiError as e:
            raise JudgeError(str(e)) from None


JUDGES = ("self", "logprob", "consistency", "api")


def make_judge(name: Union[str, Judge], **api_kwargs) -> Judge:
    """A judge by name (`self`, `logprob`, `api` with base_url=, model=, ...) or the judge given."""
    if isinstance(name, Judge):
        return name
    if name == "logprob":
        return LogprobJudge()
    if name == "self":
        return SelfJudge()
    if name == "consistency":
        from .consistency_judge import ConsistencyJudge
        return ConsistencyJudge()
    if name == "api":
        if not api_kwargs.get("base_url") or not api_kwargs.get("model"):
            raise ValueError("the api judge needs base_url and model (--api-base, --api-model)")
        return ApiJudge(**api_kwargs)
    raise ValueError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}")
