"""inference.judges: logprob picks the higher mean log-probability, verdict parsing, the self judge's
deterministic fallback and reasoning check, the API judge against a local stub server."""
import logging

import pytest
from PIL import Image

from inference.judges import (ApiJudge, Candidate, LogprobJudge, Match, SelfJudge, judge_query, judged_texts,
                              make_judge, parse_verdict)
from inference.options import DEFAULT_STAGES
from tests.fake_openai import FakeOpenAI, hang, reply, status

STAGES = {s.name: s for s in DEFAULT_STAGES}


def _cand(index, text, logprobs, answer_text=None):
    return Candidate(index, list(range(len(logprobs))), text, answer_text if answer_text is not None else text,
                     "stop", logprobs)


def _match(kind="summary", ask=None, previous="", image=None):
    stage = STAGES.get(kind.upper())
    return Match(question="How many circles?", kind=kind, stage=stage, stages=DEFAULT_STAGES, previous=previous,
                 seed=42, image=image, ask=ask)


def test_logprob_judge_prefers_the_higher_mean_not_the_higher_sum():
    long_good = _cand(0, "a b c d", [-0.5, -0.5, -0.5, -0.5])  # sum -2.0, mean -0.5
    short_bad = _cand(1, "a", [-1.0])  # sum -1.0 (higher), mean -1.0 (lower)
    judge = LogprobJudge()
    assert judge(_match(), long_good, short_bad).winner == 0
    assert judge(_match(), short_bad, long_good).winner == 1
    tie = judge(_match(), _cand(0, "x", [-1.0]), _cand(1, "y", [-1.0]))
    assert tie.winner == 0 and "-1.0000 vs -1.0000" in tie.reason and not tie.fallback


@pytest.mark.parametrize("text,winner", [
    ("Since the first one is more accurate, I choose response 1.", 0),
    ('Since [it counts correctly], I choose response [2].', 1),
    ("I choose Response 2", 1),
    ("i CHOOSE 1.", 0),
    ("Response 2 is better because it is complete.", 1),
    (" 2 ", 1),
    ("response 1 and response 2 are both fine", None),
    ("gibberish \x10 qqq 12", None),
    ("", None),
])
def test_verdict_parsing(text, winner):
    assert parse_verdict(text)[0] == winner


def test_parse_verdict_keeps_the_reason():
    assert parse_verdict("Since it names all three shapes, I choose response 2.") == (1, "it names all three shapes")


def test_self_judge_falls_back_deterministically_and_logs(caplog):
    asked = []

    def ask(query, with_image, seed):
        asked.append((query, with_image, seed))
        return "\x12 blue blue circle"  # what a random tiny model writes

    a, b = _cand(0, "<SUMMARY> x </SUMMARY>", [-3.0]), _cand(1, "<SUMMARY> y </SUMMARY>", [-2.0])
    with caplog.at_level(logging.INFO, logger="inference.judges"):
        v1 = SelfJudge()(_match(ask=ask), a, b)
        v2 = SelfJudge()(_match(ask=ask), a, b)
    assert v1 == v2 and v1.winner == 1 and v1.fallback and "fell back" in v1.reason
    assert "falling back" in caplog.text
    query, with_image, seed = asked[0]
    assert with_image and asked[0] == asked[1]  # same prompt, same seed: reproducible
    assert "Response 1:  x " not in query and "Response 1: x\nResponse 2: y" in query
    assert query.startswith("Now you act as a judge") and "I choose response [1/2]." in query


def test_reasoning_stage_checks_correctness_first():
    asked = []

    def ask(query, with_image, seed):
        asked.append((query, with_image))
        if query.startswith("Now you act as a judge, helping me determine whether"):
            return "incorrect" if "Reasoning Process: 2 + 2 = 5" in query else "correct"
        return "Since it is right, I choose response 1."

    prev = "<SUMMARY> count </SUMMARY> <CAPTION> two circles </CAPTION> "
    wrong = _cand(0, "<REASONING> 2 + 2 = 5 </REASONING>", [-1.0], prev + "<REASONING> 2 + 2 = 5 </REASONING>")
    right = _cand(1, "<REASONING> 1 + 1 = 2 </REASONING>", [-9.0], prev + "<REASONING> 1 + 1 = 2 </REASONING>")
    verdict = SelfJudge()(_match("reasoning", ask=ask, previous=prev), wrong, right)
    assert verdict.winner == 1 and "incorrect" in verdict.reason
    # both checks are asked (together), text only; no comparison is needed
    assert [w for _, w in asked] == [False, False] and "Given Information:  two circles " in asked[0][0]
    asked.clear()
    verdict = SelfJudge()(_match("reasoning", ask=ask, previous=prev), right, _cand(2, "<REASONING> ok </REASONING>",
                                                                                   [-1.0], prev + "<REASONING> ok"))
    assert verdict.winner == 0 and not verdict.fallback and [w for _, w in asked] == [False, False, True]


def test_judged_texts_follow_the_reference():
    prev = "<SUMMARY> s </SUMMARY> <CAPTION> c </CAPTION> <REASONING> r </REASONING> "
    a = _cand(0, "<CONCLUSION> A </CONCLUSION>", [-1.0], prev + "<CONCLUSION> A </CONCLUSION>")
    b = _cand(1, "<CONCLUSION> B", [-1.0], prev + "<CONCLUSION> B")  # no end tag: to the end
    outs, hint = judged_texts(_match("conclusion", previous=prev), a, b)
    assert outs == ["A", "B"] and hint == " c  r "
    outs, hint = judged_texts(_match("all"), a, b)
    assert outs == [a.answer_text, b.answer_text] and hint is None
    q = judge_query(_match("conclusion"), outs, "the hint")
    assert "Hint about the Question: the hint" in q and "Question: How many circles?" in q


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def test_api_judge_asks_the_endpoint_and_retries(fake, monkeypatch):
    monkeypatch.setenv("COGCOT_TEST_KEY", "sk-test")
    fake.script = [status(503), reply("Since it is more thorough, I choose response 2.")]
    judge = make_judge("api", base_url=fake.base_url, model="judge-model", api_key_env="COGCOT_TEST_KEY", timeout=5,
                       retries=2, backoff=0.01)
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    verdict = judge(_match("caption", image=image), _cand(0, "<CAPTION> a </CAPTION>", [-1.0]),
                    _cand(1, "<CAPTION> b </CAPTION>", [-5.0]))
    assert verdict.winner == 1 and verdict.reason == "it is more thorough" and not verdict.fallback
    assert len(fake.requests) == 2 and judge.requests == 2  # one retry after the 503
    path, headers, body = fake.requests[-1]
    assert path == "/v1/chat/completions" and headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "judge-model" and body["messages"][0]["role"] == "user"
    text, img = body["messages"][0]["content"]
    assert "Response 1: a\nResponse 2: b" in text["text"]
    assert img["image_url"]["url"].startswith("data:image/png;base64,")


def test_api_judge_failures_fall_back_after_bounded_retries(fake, monkeypatch):
    monkeypatch.delenv("COGCOT_TEST_KEY", raising=False)
    fake.script = [status(500)] * 3
    judge = ApiJudge(fake.base_url, "m", api_key_env="COGCOT_TEST_KEY", timeout=5, retries=2, backoff=0.01)
    verdict = judge(_match("all"), _cand(0, "x", [-3.0]), _cand(1, "y", [-1.0]))
    assert verdict.fallback and verdict.winner == 1 and "HTTP 500" in verdict.reason
    assert len(fake.requests) == 3 and "sk-" not in fake.requests[0][1].get("authorization", "")
    # a client error is not retried; a slow server times out
    fake.requests.clear()
    fake.script = [status(401), hang(0.6), hang(0.6)]
    assert judge(_match("all"), _cand(0, "x", [-3.0]), _cand(1, "y", [-1.0])).fallback
    assert len(fake.requests) == 1
    slow = ApiJudge(fake.base_url, "m", timeout=0.2, retries=1, backoff=0.0)
    verdict = slow(_match("all"), _cand(0, "x", [-3.0]), _cand(1, "y", [-1.0]))
    assert verdict.fallback and "attempts" in verdict.reason and len(fake.requests) == 3


def test_api_judge_endpoint_down_falls_back_at_once_with_one_warning(fake, caplog):
    """A dead endpoint: after `down_after` failed judgments, every later one falls back without a request."""
    fake.responder = lambda body: status(500)
    judge = ApiJudge(fake.base_url, "m", timeout=1, retries=1, backoff=0.0, down_after=2)
    with caplog.at_level(logging.WARNING):
        verdicts = [judge(_match("all"), _cand(0, "x", [-3.0]), _cand(1, "y", [-1.0])) for _ in range(6)]
    assert len(fake.requests) == 4  # 2 judgments x 2 attempts, then none
    assert all(v.fallback and v.winner == 1 for v in verdicts)
    assert all("is down" in v.reason for v in verdicts[2:]) and "is down" not in verdicts[0].reason
    assert sum("treated as down" in r.getMessage() for r in caplog.records) == 1
    assert sum("judge failed" in r.getMessage() for r in caplog.records) == 2  # the two real failures only


def test_make_judge_names():
    assert make_judge("logprob").name == "logprob" and make_judge("self").name == "self"
    with pytest.raises(ValueError, match="base_url"):
        make_judge("api")
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("oracle")


def test_consistency_judge_keeps_the_candidate_that_reaches_the_majority_conclusion():
    from inference.consistency_judge import ConsistencyJudge
    from inference.judges import Candidate, Match
    from inference.options import DEFAULT_STAGES
    cands = [Candidate(k, [10 + k], f"caption {k}", f"<CAPTION> caption {k} </CAPTION>", "stop", [lp])
             for k, lp in enumerate([-0.1, -0.2, -0.3, -0.4])]
    rests = {10: " <CONCLUSION> B </CONCLUSION>", 11: " <CONCLUSION> A </CONCLUSION>",
             12: " <CONCLUSION> A. </CONCLUSION>", 13: " <CONCLUSION>  a </CONCLUSION>"}
    asked = []

    def complete_many(extras):
        asked.append([tuple(e) for e in extras])
        return [rests[e[0]] for e in extras]

    match = Match(question="Q", kind="caption", stage=DEFAULT_STAGES[1], stages=DEFAULT_STAGES, previous="",
                  seed=1, step_seed=7, candidates=cands, complete_many=complete_many)
    judge = ConsistencyJudge()
    v = judge(match, cands[0], cands[1])  # 0 has the better log-prob but the minority conclusion
    assert v.winner == 1 and judge.majority == "a" and not v.fallback
    assert judge(match, cands[2], cands[3]).winner == 0  # both agree: the log-prob decides
    assert len(asked) == 1  # one batch of continuations for the whole step
    # a tie between two conclusions is no majority: log-prob
    rests.update({12: " <CONCLUSION> B </CONCLUSION>", 13: " <CONCLUSION> B </CONCLUSION>"})
    rests.update({11: " <CONCLUSION> A </CONCLUSION>", 10: " <CONCLUSION> A </CONCLUSION>"})
    tie = Match(question="Q", kind="caption", stage=DEFAULT_STAGES[1], stages=DEFAULT_STAGES, previous="",
                seed=1, step_seed=8, candidates=cands, complete_many=complete_many)
    assert judge(tie, cands[3], cands[0]).winner == 1 and judge.majority is None
