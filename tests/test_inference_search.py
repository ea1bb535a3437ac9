"""inference.search: the fast runner (one batch over a shared prefix, caches reused) and the reference
runner (sequential, full re-encode) choose the same text with the same random streams; the tournament
is the reference's; every judgment is logged."""
import json
import random

import pytest
from PIL import Image

from inference.generation import ForwardCounter
from inference.prompt import build_prompt
from inference.options import GREEDY, REFERENCE_SAMPLING, SearchOptions, StageSpec
from inference.search import StagedSearch, plan_tournament, tournament_rounds

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = "What color is the shape?\nOptions: A. red B. blue C. green D. yellow"
JUDGE_SAMPLING = REFERENCE_SAMPLING.replace(max_new_tokens=3)


def _image():
    return Image.new("RGB", (56, 56), (220, 40, 40))


def _run(model, tok, judge, **opts):
    results = {}
    for reference in (False, True):
        search = StagedSearch(model, tok, judge=judge,
                              options=SearchOptions(reference=reference, judge_sampling=JUDGE_SAMPLING, **opts))
        with ForwardCounter(model) as count:
            result = search(_image(), QUESTION, seed=5)
        results[reference] = (result, count.snapshot())
    return results[False], results[True]


def _same_choices(fast, ref):
    assert fast.text == ref.text and fast.finish == ref.finish
    assert [s.winner for s in fast.steps] == [s.winner for s in ref.steps]
    for a, b in zip(fast.steps, ref.steps):
        assert [c.tokens for c in a.candidates] == [c.tokens for c in b.candidates]
        strip = [{k: v for k, v in j.items() if k != "mode"} for j in a.judgments]
        assert strip == [{k: v for k, v in j.items() if k != "mode"} for j in b.judgments]


def test_stage_mode_fast_equals_reference_with_the_self_judge(tiny_vlm):
    model, tok = tiny_vlm
    (fast, fast_count), (ref, ref_count) = _run(model, tok, "self", mode="stage", n=4, max_step_tokens=3)
    _same_choices(fast, ref)
    assert [s.name for s in fast.steps] == ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]
    judged = [j for s in fast.steps for j in s.judgments]
    assert len(judged) == 4 * 3 and all(j["raw"] or j["reason"] for j in judged)  # n - 1 matches per stage
    assert fast_count["vision_images"] == 1  # the ViT ran once for candidates and judges
    # per candidate, and per comparison prompt (with the image) that a failed reasoning check did not settle
    compared = sum(not j["reason"].endswith("was judged incorrect") for j in judged)
    assert ref_count["vision_images"] == 4 * 4 + compared
    assert fast_count["lm_tokens"] < ref_count["lm_tokens"] / 2
    assert fast_count["lm_calls"] < ref_count["lm_calls"]


def test_best_of_n_fast_equals_reference(tiny_vlm):
    model, tok = tiny_vlm
    (fast, fast_count), (ref, ref_count) = _run(model, tok, "logprob", mode="best_of_n", n=4, max_new_tokens=6)
    _same_choices(fast, ref)
    cands = fast.steps[0].candidates
    assert len(fast.steps) == 1 and len(cands) == 4
    p = len(build_prompt(tok, QUESTION, image_length=model.args.image_length))
    # fast: the prompt once, then each row's own tokens; reference: the prompt again for every candidate
    assert fast_count["lm_tokens"] == p + sum(c.row.fed for c in cands)
    assert ref_count["lm_tokens"] == sum(p + c.row.fed for c in cands)
    assert (fast_count["vision_images"], ref_count["vision_images"]) == (1, 4)


def test_sentence_mode_fast_equals_reference(tiny_vlm):
    model, tok = tiny_vlm
    stages = tuple(StageSpec.tagged(n) for n in ("A", "B"))
    (fast, _), (ref, _) = _run(model, tok, "logprob", mode="sentence", n=2, max_step_tokens=3, max_steps=3,
                               stages=stages)
    _same_choices(fast, ref)
    assert len(fast.steps) == 3 and fast.finish == "steps"


def test_winner_is_never_re_encoded(tiny_vlm):
    """Forward positions of the fast stage search: the prompt once, then per stage the rows' own tokens
    (and the previous winner's last token) only; logprob judging costs nothing."""
    model, tok = tiny_vlm
    search = StagedSearch(model, tok, judge="logprob", options=SearchOptions(n=4, max_step_tokens=4))
    with ForwardCounter(model) as count:
        result = search(_image(), QUESTION, seed=1)
    prompt = build_prompt(tok, QUESTION, image_length=search.image_length)
    own = sum(c.row.fed for s in result.steps for c in s.candidates)  # tokens each row ran (not its last)
    pending = len(result.steps) - 1  # each earlier winner's last token runs once, batch 1
    assert count.lm_tokens == len(prompt) + own + pending and count.vision_images == 1
    # memory: the largest cache attended over is the prefix once plus each row's own tokens (N x new tokens)
    per_token = model.args.num_layers * 2 * model.args.hidden_size * 8  # keys + values, float64
    answer = sum(len(s.candidates[s.winner].tokens) for s in result.steps)
    assert count.kv_peak_bytes <= per_token * (len(prompt) + answer + 4 * 4)


def test_tournament_plan_is_the_reference_procedure():
    """The planned pairings equal the reference's loop (pop two at random, append the winner)."""
    for n in range(1, 9):
        def better(i, j):  # any deterministic judge
            return (i * 7 + j * 3) % 2
        rng = random.Random(n)
        pool = list(range(n))
        while len(pool) > 1:  # the reference loop
            a = pool.pop(rng.randrange(len(pool)))
            b = pool.pop(rng.randrange(len(pool)))
            pool.append(a if better(a, b) == 0 else b)
        resolved = {("c", i): i for i in range(n)}
        plan = plan_tournament(n, random.Random(n))
        for m, (x, y) in enumerate(plan):
            a, b = resolved[x], resolved[y]
            resolved[("w", m)] = a if better(a, b) == 0 else b
        assert len(plan) == n - 1
        assert (resolved[("w", n - 2)] if n > 1 else 0) == pool[0]
        by_round = {("c", i): i for i in range(n)}  # judging round by round: the same winners
        rounds = tournament_rounds(plan)
        assert sorted(m for r in rounds for m in r) == list(range(n - 1))
        for r in rounds:
            for m in r:
                a, b = by_round[plan[m][0]], by_round[plan[m][1]]
                by_round[("w", m)] = a if better(a, b) == 0 else b
        assert all(by_round[("w", m)] == resolved[("w", m)] for m in range(n - 1))
    assert tournament_rounds(plan_tournament(8, random.Random(0))) != [[m] for m in range(7)]


def test_every_judgment_is_logged(tiny_vlm, tmp_path):
    model, tok = tiny_vlm
    path = tmp_path / "judgments.jsonl"
    search = StagedSearch(model, tok, judge="self", log=str(path),
                          options=SearchOptions(n=2, max_step_tokens=2, judge_sampling=JUDGE_SAMPLING))
    result = search(_image(), QUESTION, question_id="q7", seed=3)
    search.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]
    for line, step in zip(lines, result.steps):
        assert line["question_id"] == "q7" and line["judge"] == "self" and line["mode"] == "fast"
        assert line["candidates"] == [step.candidates[i].text for i in line["pair"]]
        assert line["winner"] == step.winner and line["verdict"] in (1, 2) and line["reason"]
        # a random tiny model writes no parsable verdict: the fallback is deterministic and marked
        assert line["fallback"] == ("fell back" in line["reason"])


def test_stage_mode_fast_equals_reference_with_the_consistency_judge(tiny_vlm):
    model, tok = tiny_vlm
    (fast, _), (ref, _) = _run(model, tok, "consistency", mode="stage", n=4, max_step_tokens=3, max_new_tokens=14)
    _same_choices(fast, ref)
    assert all(j["judge"] == "consistency" and "majority" in j["raw"] for s in fast.steps for j in s.judgments)


def test_greedy_candidate_is_the_greedy_answer_and_fast_equals_reference(tiny_vlm):
    """greedy_candidate: candidate 0 is what greedy decoding writes, the other candidates are the ones
    drawn without it (each keeps its own stream), and the fast runner still equals the reference."""
    model, tok = tiny_vlm
    opts = dict(mode="best_of_n", n=3, max_new_tokens=6, judge_sampling=JUDGE_SAMPLING)

    def candidates(**extra):
        search = StagedSearch(model, tok, judge="logprob", options=SearchOptions(**{**opts, **extra}))
        return [c.tokens for c in search(_image(), QUESTION, seed=5).steps[0].candidates]

    greedy, = candidates(n=1, sampling=GREEDY)
    with_greedy, sampled = candidates(greedy_candidate=True), candidates()
    assert with_greedy[0] == greedy and with_greedy[1:] == sampled[1:]
    assert sampled[0] != greedy  # at T 0.6 the tiny random model's first sample leaves the greedy path
    (fast, _), (ref, _) = _run(model, tok, "logprob", mode="stage", n=3, max_step_tokens=3, greedy_candidate=True)
    _same_choices(fast, ref)
