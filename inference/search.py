"""Staged search (LLaVA-CoT): for each step, N candidates continue the answer so far; a knockout
tournament of pairwise judgments keeps one; it is appended and the next step starts.

Steps per mode: `stage` (one per stage, candidates stop at the stage's end tag), `best_of_n` (one step,
whole answers), `sentence` (candidates stop at a sentence end, until the last stage's end tag).

Two runners carry out the same procedure with the same random streams (one generator per candidate,
seeded from (seed, step, candidate); the tournament's pairings and the judges' samples likewise):

- `FastRunner` (default): the image is encoded once and the prompt run once; the N candidates of a
  step decode as ONE batch over the shared prefix (`PackedRowCache`), each row stopping at its own end tag;
  the winner's keys/values are appended to the prefix (never re-encoded). A judge prompt runs only what
  follows its longest common token prefix with a kept cache: the image span `[BOS][BOI][IMG]xL[EOI]`
  (common to the question and every judge prompt with the image; the ViT runs once per question) or
  the previous judge prompt (same intro and question). The matches of a tournament round are
  independent: their judge prompts decode as one batch over their common prefix (`generate_ragged`);
  a repeated judge call (same prompt, same seed) is answered once.
- `ReferenceRunner` (`SearchOptions(reference=True)`, `--reference`): like the reference code, one
  candidate at a time, with the image and the whole prefix re-encoded for every candidate and every
  judge call.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .generation import (GREEDY_ROW, Prefix, StopCriteria, commit, generate_one, generate_ragged, make_generator, ready,
                         run_prompt, sample_rows)
from .image import ImageLike, Pixels, image_size_of, model_device_dtype, open_image
from .judges import Candidate, Judge, Match, make_judge
from .options import SearchOptions, StageSpec, derive_seed
from .prompt import Prompt, build_prompt, common_prefix_length


@dataclass
class Step:
    """What one search step did: its candidates, the judgments and the text it kept."""
    index: int
    name: str
    kind: str
    candidates: List[Candidate]
    winner: int
    judgments: List[dict] = field(default_factory=list)
    added: Optional[str] = None  # what the kept candidate added to the decoded answer (set on commit)

    @property
    def text(self) -> str:
        """The kept text as it reads inside the whole answer: the steps' texts join to the answer (a
        candidate decoded on its own can differ at its first token, e.g. a word piece's leading space)."""
        return self.added if self.added is not None else self.candidates[self.winner].text


@dataclass
class SearchResult:
    text: str  # the whole answer
    steps: List[Step]
    finish: str  # "done" (last stage/tag reached), "eos", "length" (token budget spent), "steps"


class JudgmentLog:
    """Appends one JSON line per judgment to `path`."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# ----------------------------------------------------------------------------- runners

class _Runner:
    """Model work for one question: candidates for a step, commit of the winner, judge prompts."""

    def __init__(self, search: "StagedSearch", image, prompt: Prompt):
        self.s, self.image, self.prompt = search, image, prompt
        self.answer_ids: List[int] = []

    def answer_text(self, extra: Sequence[int] = ()) -> str:
        return self.s.tokenizer.decode(self.answer_ids + list(extra))

    def completion_prompt(self, extra: Sequence[int]) -> Prompt:
        """The question and the answer so far followed by `extra` (a candidate's tokens)."""
        return self.prompt.extended(self.answer_ids + list(extra))

    def completion_settings(self):
        """(greedy sampling, stop at the last stage's end tag, token cap) of a quick continuation."""
        s = self.s
        cap = max(1, s.options.max_new_tokens - len(self.answer_ids))
        return (s.options.sampling.replace(temperature=0.0, max_new_tokens=cap),
                StopCriteria(strings=(s.options.stages[-1].end,)), cap)

    def _judge_prompt(self, query, with_image: bool) -> Prompt:
        s = self.s
        return build_prompt(s.tokenizer, query, image_length=s.image_length, template=s.template,
                            image=with_image and self.image is not None)


class FastRunner(_Runner):
    # Judge prompts whose caches are kept for reuse besides the image span (each holds a whole prompt, so
    # this bounds the extra memory): the previous one shares its head with the next judgment of a step.
    KEEP_PROMPTS = 2

    def __init__(self, search, image, prompt):
        super().__init__(search, image, prompt)
        model = search.model
        self.image_prefix: Optional[Prefix] = None
        self._kept: List[Prefix] = []  # recent judge prompts' caches, most recent last
        self.embeds = None
        if prompt.has_image:
            with torch.no_grad():
                self.embeds = model.encode_images(search.pixels([image]))
        self.state = run_prompt(model, prompt, image_embeds=self.embeds)
        if prompt.has_image:  # its first tokens are the image span's cache, the base of every judge prompt
            self.image_prefix = Prefix(self.state.cache.truncate(prompt.image_end),
                                       list(prompt.input_ids[:prompt.image_end]),
                                       prompt.position_ids[prompt.image_end - 1] + 1, None)
        self._answers: Dict[tuple, str] = {}

    def candidates(self, generators, stop: StopCriteria, max_tokens: int):
        s = self.s
        self.state = ready(s.model, self.state)  # the last winner's final token, never run yet
        return sample_rows(s.model, self.state, generators, options=s.options.sampling, stop=stop,
                           tokenizer=s.tokenizer, max_new_tokens=max_tokens, keep_kv=True)

    def commit(self, row) -> None:
        self.state = commit(self.state, row)
        self.answer_ids += row.tokens

    def _cached(self, prompt: Prompt, stop: int, need_logits: bool = True) -> Prefix:
        """prompt[:stop], run only after the longest token prefix it shares with a kept cache: at least the
        image span (common to the question and every judge prompt with the image), and the previous judge
        prompt's head (same intro and question) when there is one."""
        cap = stop - 1 if need_logits else stop
        best, keep = None, 0
        for kept in ([self.image_prefix] if self.image_prefix is not None else []) + self._kept:
            n = min(common_prefix_length(kept.ids, prompt.input_ids), cap)
            if n > keep and (n >= prompt.image_end or not prompt.has_image):
                best, keep = kept, n
        if best is None:
            return run_prompt(self.s.model, prompt, image_embeds=self.embeds, stop=stop)
        base = Prefix(best.cache.truncate(keep), list(prompt.input_ids[:keep]), prompt.position_ids[keep - 1] + 1,
                      None)
        return base if keep == stop else run_prompt(self.s.model, prompt, start=keep, base=base, stop=stop)

    def _keep(self, prefix: Prefix) -> None:
        self._kept = (self._kept + [prefix])[-self.KEEP_PROMPTS:]

    def ask(self, query: str, with_image: bool, seed: int) -> str:
        return self.ask_many([(query, with_image, seed)])[0]

    def complete_many(self, extras: Sequence[Sequence[int]]) -> List[str]:
        """Greedy continuations (to the last stage's end tag) of the answer so far followed by each of
        `extras`, decoded as one batch over their common prefix (the image span's cache is reused)."""
        s = self.s
        options, stop, cap = self.completion_settings()
        prompts = [self.completion_prompt(extra) for extra in extras]
        if len(prompts) == 1:
            prefix = self._cached(prompts[0], len(prompts[0]))
            return [generate_one(s.model, prefix, make_generator(0), options=options, stop=stop,
                                 tokenizer=s.tokenizer, max_new_tokens=cap).text]
        first = prompts[0]
        common = min(min(common_prefix_length(first.input_ids, p.input_ids), len(p) - 1) for p in prompts)
        head = self._cached(first, common, need_logits=False)
        rows = generate_ragged(s.model, head, prompts, [make_generator(0) for _ in prompts], options=options,
                               stop=stop, tokenizer=s.tokenizer, max_new_tokens=cap)
        return [row.text for row in rows]

    def ask_many(self, requests) -> List[str]:
        """Judge prompts answered together: those with a common prefix decode as one batch over it."""
        s = self.s
        opts = s.options.judge_sampling
        prompts = [self._judge_prompt(q, img) for q, img, _ in requests]
        keys = [(p.input_ids, seed) for p, (_, _, seed) in zip(prompts, requests)]
        todo = {}
        for p, key in zip(prompts, keys):
            if key not in self._answers:  # the same prompt with the same seed: the same answer
                todo.setdefault(key, p)
        for has_image in (True, False):
            group = [(key, p) for key, p in todo.items() if p.has_image == has_image]
            if len(group) == 1:
                (key, p), = group
                prefix = self._cached(p, len(p))
                self._keep(prefix)
                row = generate_one(s.model, prefix, make_generator(key[1]), options=opts, stop=StopCriteria(),
                                   tokenizer=s.tokenizer, max_new_tokens=opts.max_new_tokens)
                self._answers[key] = row.text
            elif group:
                first = group[0][1]
                common = min(min(common_prefix_length(first.input_ids, p.input_ids), len(p) - 1) for _, p in group)
                head = self._cached(first, common, need_logits=False)
                self._keep(head)
                rows = generate_ragged(s.model, head, [p for _, p in group], [make_generator(k[1]) for k, _ in group],
                                       options=opts, stop=StopCriteria(), tokenizer=s.tokenizer,
                                       max_new_tokens=opts.max_new_tokens)
                for (key, _), row in zip(group, rows):
                    self._answers[key] = row.text
        return [self._answers[key] for key in keys]


class ReferenceRunner(_Runner):
    """The reference procedure: every candidate and every judge call re-encodes image and prefix."""

    def _encode(self, prompt: Prompt) -> Prefix:
        s = self.s
        embeds = None
        if prompt.has_image:
            with torch.no_grad():
                embeds = s.model.encode_images(s.pixels([self.image]))
        return run_prompt(s.model, prompt, image_embeds=embeds)

    def candidates(self, generators, stop: StopCriteria, max_tokens: int):
        s = self.s
        rows = []
        for g in generators:
            prefix = self._encode(self.prompt.extended(self.answer_ids))
            rows.append(generate_one(s.model, prefix, g, options=s.options.sampling, stop=stop,
                                     tokenizer=s.tokenizer, max_new_tokens=max_tokens))
        return rows

    def commit(self, row) -> None:
        self.answer_ids += row.tokens

    def ask_many(self, requests) -> List[str]:
        return [self.ask(q, img, seed) for q, img, seed in requests]

    def complete_many(self, extras: Sequence[Sequence[int]]) -> List[str]:
        """Greedy continuations, one at a time, each with image and prefix re-encoded."""
        s = self.s
        options, stop, cap = self.completion_settings()
        return [generate_one(s.model, self._encode(self.completion_prompt(extra)), make_generator(0),
                             options=options, stop=stop, tokenizer=s.tokenizer, max_new_tokens=cap).text
                for extra in extras]

    def ask(self, query, with_image: bool, seed: int) -> str:
        s = self.s
        prefix = self._encode(self._judge_prompt(query, with_image))
        return generate_one(s.model, prefix, make_generator(seed), options=s.options.judge_sampling, stop=StopCriteria(),
                            tokenizer=s.tokenizer, max_new_tokens=s.options.judge_sampling.max_new_tokens).text


# ----------------------------------------------------------------------------- the procedure

def plan_tournament(n: int, rng: random.Random) -> List[Tuple[tuple, tuple]]:
    """The pairings of a knockout over n candidates, as in the reference: pop two random entries of the
    pool, put the winner at the end. Entries are ("c", i) for candidate i or ("w", k) for the winner of
    match k. The draws depend only on the pool's length, so the plan can be made before judging."""
    pool = [("c", i) for i in range(n)]
    matches = []
    while len(pool) > 1:
        first = pool.pop(rng.randrange(len(pool)))
        second = pool.pop(rng.randrange(len(pool)))
        matches.append((first, second))
        pool.append(("w", len(matches) - 1))
    return matches


def tournament_rounds(plan: Sequence[Tuple[tuple, tuple]]) -> List[List[int]]:
    """Match indices grouped by round: a match is ready once the matches whose winners it takes are
    judged. Judging round by round gives the same winners as judging in plan order."""
    depth: Dict[int, int] = {}
    for m, pair in enumerate(plan):
        depth[m] = 1 + max((depth[k] for kind, k in pair if kind == "w"), default=0)
    return [[m for m in range(len(plan)) if depth[m] == d] for d in sorted(set(depth.values()))]


class StagedSearch:
    """LLaVA-CoT staged search with a pluggable judge.

        search = StagedSearch(model, tokenizer, judge="logprob", options=SearchOptions(mode="stage", n=4))
        result = search(image, "How many circles?")     # result.text, result.steps

    judge: "logprob" | "self" | a `Judge` (e.g. `ApiJudge(...)`); log: a JSONL path (or `JudgmentLog`)
    receiving every judgment (`close()` closes it).
    """

    def __init__(self, model, tokenizer, judge: Union[str, Judge] = "logprob",
                 options: SearchOptions = SearchOptions(), *, template: str = "chat_old",
                 log: Union[None, str, os.PathLike, JudgmentLog] = None, image_size=None):
        self.model, self.tokenizer, self.options, self.template = model, tokenizer, options, template
        self.judge = make_judge(judge)
        self.image_length = model.args.image_length
        device, dtype = model_device_dtype(model)
        self.pixels = Pixels(image_size or image_size_of(model.args), device=device, dtype=dtype)
        self.log = JudgmentLog(log) if isinstance(log, (str, os.PathLike)) else log

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def __call__(self, image: Optional[ImageLike], question: str, history: Sequence[Tuple[str, str]] = (), *,
                 seed: Optional[int] = None, question_id=None,
                 on_step: Optional[Callable[[Step], None]] = None,
                 on_event: Optional[Callable[[str, dict], None]] = None) -> SearchResult:
        """on_step(step) after each step is decided; on_event(kind, data) as it happens, for live views:
        ("candidates", {step, stage, candidates}) before the tournament, ("match", judgment record) per verdict."""
        opts = self.options
        seed = opts.seed if seed is None else seed
        pil = open_image(image) if image is not None else None
        prompt = build_prompt(self.tokenizer, question, history, image_length=self.image_length,
                              template=self.template, image=pil is not None)
        runner = (ReferenceRunner if opts.reference else FastRunner)(self, pil, prompt)
        steps: List[Step] = []
        final_end = opts.stages[-1].end
        finish = "done"
        answer = runner.answer_text()  # the decoded answer so far, kept in step with every commit
        for index, (name, kind, stage, stop, cap) in enumerate(self._plan()):
            room = opts.max_new_tokens - len(runner.answer_ids)
            if room <= 0:
                finish = "length"
                break
            if opts.mode == "sentence" and index >= opts.max_steps:
                finish = "steps"
                break
            step = self._step(runner, index, name, kind, stage, stop, min(cap, room), question, seed, question_id,
                              on_event)
            steps.append(step)
            winner = step.candidates[step.winner]
            runner.commit(winner.row)
            after = runner.answer_text()
            step.added = after[len(answer):] if after.startswith(answer) else winner.text
            answer = after
            if on_step is not None:
                on_step(step)
            if winner.finish == "eos":
                finish = "eos"
                break
            if opts.mode == "sentence" and final_end in answer:
                break
        return SearchResult(answer.strip(), steps, finish)

    def _plan(self):
        """(name, judge kind, stage, stop criteria, token cap) per step; sentence mode repeats forever."""
        opts = self.options
        final_end = opts.stages[-1].end
        if opts.mode == "stage":
            for st in opts.stages:
                yield st.name, st.name.lower(), st, StopCriteria(strings=(st.end,)), opts.max_step_tokens
        elif opts.mode == "best_of_n":
            yield "answer", "all", None, StopCriteria(strings=(final_end,)), opts.max_new_tokens
        else:
            k = 0
            while True:
                k += 1
                yield (f"sentence {k}", "sentence", None,
                       StopCriteria(strings=(final_end,), sentence_ends=opts.sentence_ends), opts.max_step_tokens)

    def _step(self, runner: _Runner, index: int, name: str, kind: str, stage: Optional[StageSpec],
              stop: StopCriteria, cap: int, question: str, seed: int, question_id, on_event=None) -> Step:
        n = self.options.n
        generators = [make_generator(derive_seed(seed, index, "candidate", k)) for k in range(n)]
        if self.options.greedy_candidate:
            generators[0] = GREEDY_ROW  # the others keep their own streams
        rows = runner.candidates(generators, stop, cap)
        cands = [Candidate(k, list(r.tokens), r.text, runner.answer_text(r.tokens), r.finish, list(r.logprobs), r)
                 for k, r in enumerate(rows)]
        step = Step(index, name, kind, cands, 0)
        if on_event is not None:
            on_event("candidates", {"step": index, "stage": name, "candidates": [c.text for c in cands]})
        if n == 1:
            return step
        previous = runner.answer_text()
        step_seed = derive_seed(seed, index, "step")
        resolved: Dict[tuple, int] = {("c", i): i for i in range(n)}
        plan = plan_tournament(n, random.Random(derive_seed(seed, index, "tournament")))
        for round_ in tournament_rounds(plan):  # matches of a round are independent: judged together
            pairs = [(m, resolved[plan[m][0]], resolved[plan[m][1]]) for m in round_]
            items = [(Match(question=question, kind=kind, stage=stage, stages=self.options.stages,
                            previous=previous, seed=derive_seed(seed, index, "match", m), step_seed=step_seed,
                            image=runner.image, ask=runner.ask, ask_many=runner.ask_many, candidates=cands,
                            complete_many=runner.complete_many), cands[i], cands[j])
                     for m, i, j in pairs]
            for (m, i, j), verdict in zip(pairs, self.judge.judge_many(items)):
                winner = i if verdict.winner == 0 else j
                resolved[("w", m)] = winner
                record = {"question_id": question_id, "step": index, "stage": name, "kind": kind, "match": m,
                          "pair": [i, j], "candidates": [cands[i].text, cands[j].text], "winner": winner,
                          "verdict": verdict.winner + 1, "reason": verdict.reason, "raw": verdict.raw,
                          "fallback": verdict.fallback, "judge": self.judge.name,
                          "mode": "reference" if self.options.reference else "fast"}
                step.judgments.append(record)
                if self.log is not None:
                    self.log.write(record)
                if on_event is not None:
                    on_event("match", record)
        step.winner = resolved[("w", len(plan) - 1)]
        return step
