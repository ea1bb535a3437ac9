"""dataset.teacher against the fake endpoint: accepted and rejected sets with their reasons, faults that
leave samples pending, resume after kill -9, the bound on requests in flight, exit codes, bad input
named before any request, TSV input, --verify llm, and output that dataset.inspect takes as it is."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from PIL import Image

from dataset import inspect as inspect_cli
from dataset.teacher import main as teacher_main
from dataset.teacher_checks import (DEFAULT_TEMPLATE, Task, answer_check, fill_template, format_check, leak_check,
                                    load_template, refusal_check)
from dataset.cot_format import STAGE_TAGS, tsv_row_to_prompt
from tests.fake_openai import FakeOpenAI, cut, hang, malformed, prompt_text, reply, status

OPTIONS = "Options: A. red B. green C. blue D. yellow"
GOOD = "<SUMMARY> I look at the colour. </SUMMARY> <CAPTION> One {c} circle. </CAPTION> " \
       "<REASONING> The circle is {c}, so the option is {l}. </REASONING> <CONCLUSION> {l} </CONCLUSION>"
COLOURS = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}


def good(letter):
    return GOOD.format(c=COLOURS[letter], l=letter)


def _question(body):
    m = re.search(r"Question: (\S+)", prompt_text(body))
    return m.group(1) if m else ""


def _answer(body):
    return re.search(r"The right answer is: (\w)", prompt_text(body)).group(1)


class Teacher:
    """A fake teacher whose behaviour is chosen by the question's name; counts requests per question."""

    def __init__(self, delay=0.0):
        self.seen, self.delay, self.lock = Counter(), delay, threading.Lock()

    def __call__(self, body):
        text = prompt_text(body)
        if text.startswith("You check worked solutions"):
            return reply("invalid" if "q-invalid" in text else "valid")
        q, letter = _question(body), _answer(body)
        with self.lock:
            self.seen[q] += 1
            n = self.seen[q]
        wrong = "A" if letter != "A" else "B"
        bad = {
            "q-wrong": good(wrong),
            "q-missing": good(letter).replace("<CAPTION> One", "One").replace(" </CAPTION>", ""),
            "q-order": "<CAPTION> c </CAPTION> <SUMMARY> s </SUMMARY> <REASONING> r </REASONING> "
                       f"<CONCLUSION> {letter} </CONCLUSION>",
            "q-refusal": "I'm sorry, but I cannot help with identifying this image.",
            "q-leak": good(letter).replace("so the option", "as the standard answer says, the option"),
            "q-flaky": good(wrong) if n == 1 else None,  # wrong once, then right
        }.get(q)
        if q == "q-429" and n == 1:
            return status(429, retry_after=0.2)
        if q == "q-malformed" and n == 1:
            return malformed()
        if q == "q-cut" and n == 1:
            return cut()
        if q == "q-500":
            return status(500)
        return reply(bad if bad is not None else good(letter), delay=self.delay, usage=(100, 40))


def write_data(tmp_path, names, answer="D", extra=None):
    """A JSONL of one-image records whose questions are `names` (answer D unless told), with their PNGs."""
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (40 * i % 256, 90, 200)).save(tmp_path / "img" / f"{i}.png")
        rec = {"id": f"s{i}-{name}", "image": f"img/{i}.png", "answer": answer,
               "conversations": [{"from": "human", "value": f"<image>\n{name} What colour?\n{OPTIONS}"},
                                 {"from": "gpt", "value": "D"}]}
        rec.update((extra or {}).get(name, {}))
        lines.append(json.dumps(rec))
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_teacher(fake, data, out, *extra):
    return teacher_main(["--data", str(data), "--out", str(out), "--api-base", fake.base_url, "--api-model", "t",
                         "--no-progress", "--api-timeout", "5", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")] if os.path.exists(path) else []


def test_accepted_rejected_and_reasons_and_clean_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COGCOT_TEACHER_KEY", "sk-teacher-secret")
    names = ["q-good", "q-flaky", "q-wrong", "q-missing", "q-order", "q-refusal", "q-leak"]
    data = write_data(tmp_path, names, extra={"q-good": {"hint": "Look closely at the circle in the middle."}})
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(Teacher()) as fake:
        code = run_teacher(fake, data, out, "--workers", "3", "--api-retries", "2", "--api-key-env",
                           "COGCOT_TEACHER_KEY")
        assert fake.requests[0][1]["authorization"] == "Bearer sk-teacher-secret"
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0 and "sk-teacher-secret" not in captured.out + captured.err
    accepted = {r["id"]: r for r in read_jsonl(out)}
    rejected = {r["id"]: r["reasons"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")}
    assert set(accepted) == {"s0-q-good", "s1-q-flaky"}
    assert set(rejected) == {"s2-q-wrong", "s3-q-missing", "s4-q-order", "s5-q-refusal", "s6-q-leak"}
    expect = {"s2-q-wrong": "answer: the conclusion picks A, the standard answer is D",
              "s3-q-missing": "format: missing <CAPTION>", "s4-q-order": "format: stages out of order",
              "s5-q-refusal": "refusal:", "s6-q-leak": "leak: mentions 'standard answer'"}
    for rid, reasons in rejected.items():
        assert len(reasons) == 2 and all(expect[rid] in r for r in reasons), (rid, reasons)
        assert [r.split(":")[0] for r in reasons] == ["attempt 1", "attempt 2"]
    assert "rejections by check: " in printed and "format 2" in printed
    assert "tokens: prompt 1300, completion 520" in printed  # 1 + 2 + 5 x 2 replies, usage (100, 40) each
    # the records: assistant turn replaced, user turn as given, nothing of the prompt, answer or hint
    rec = accepted["s0-q-good"]
    assert rec["conversations"][0]["value"] == f"<image>\nq-good What colour?\n{OPTIONS}"
    assert rec["conversations"][1]["value"] == good("D") and rec["image"] == "img/0.png"
    instruction = open(DEFAULT_TEMPLATE).read().splitlines()[0][:40]
    for r in accepted.values():
        text = json.dumps(r)
        assert "answer" not in r and "hint" not in r
        assert instruction not in text and "right answer" not in text and "Look closely" not in text
    assert inspect_cli.main([str(out), "--image-root", str(tmp_path)]) == 0


def test_http_faults_are_retried_and_failed_samples_stay_pending(tmp_path, capsys):
    data = write_data(tmp_path, ["q-429", "q-malformed", "q-cut", "q-500", "q-good"])
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(Teacher()) as fake:
        assert run_teacher(fake, data, out, "--workers", "2", "--api-retries", "2") == 3
        assert sum(1 for _, _, b in fake.requests if _question(b) == "q-500") == 2  # its 2 attempts
    err = capsys.readouterr().err
    assert {r["id"] for r in read_jsonl(out)} == {"s0-q-429", "s1-q-malformed", "s2-q-cut", "s4-q-good"}
    assert read_jsonl(tmp_path / "out.rejected.jsonl") == [] and "HTTP 500" in err
    with FakeOpenAI(lambda body: reply(good(_answer(body)))) as fake:  # the endpoint recovered
        assert run_teacher(fake, data, out) == 0
        assert len(fake.requests) == 1  # only the pending sample was asked
    assert len(read_jsonl(out)) == 5


def test_a_dead_endpoint_is_given_up_on_quickly(tmp_path, capsys):
    data = write_data(tmp_path, [f"q-{i}" for i in range(20)])
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(lambda body: status(503)) as fake:
        start = time.monotonic()
        assert run_teacher(fake, data, out, "--workers", "2", "--api-retries", "2") == 3
        assert len(fake.requests) <= 2 * 2 * 2 + 2  # the breaker opened: not 20 samples x 2 attempts
    assert time.monotonic() - start < 20
    printed = capsys.readouterr()
    assert "pending 20" in printed.out and "treated as down" in printed.out
    assert read_jsonl(out) == [] and read_jsonl(tmp_path / "out.rejected.jsonl") == []


def test_at_most_workers_requests_in_flight_even_past_the_deadline(tmp_path):
    data = write_data(tmp_path, [f"q-{i}" for i in range(12)])
    with FakeOpenAI(Teacher(delay=0.1)) as fake:
        fake.script = [hang(1.5)] * 3  # three requests given up on at the 0.5 s deadline, then retried
        code = teacher_main(["--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--api-base", fake.base_url,
                             "--api-model", "t", "--no-progress", "--workers", "3", "--api-timeout", "0.5"])
        assert code == 0 and 2 <= fake.max_in_flight <= 3


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path):
    names = [f"q-{i}" for i in range(16)]
    data = write_data(tmp_path, names)
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(Teacher(delay=0.25)) as fake:
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        proc = subprocess.Popen([sys.executable, "-m", "dataset.teacher", "--data", str(data), "--out", str(out),
                                 "--api-base", fake.base_url, "--api-model", "t", "--workers", "2", "--no-progress"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(read_jsonl(out)) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = {r["id"] for r in read_jsonl(out)}
        assert 4 <= len(before) < len(names)
        with open(out, "a") as f:
            f.write('{"id": "s15-q-15", "conversations": [{"fr')  # a line cut short by the kill
        asked = len(fake.requests)
        assert run_teacher(fake, data, out, "--workers", "4") == 0
        again = [_question(b) for _, _, b in fake.requests[asked:]]
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(names)  # nothing lost, nothing twice
    assert not {f"s{n.split('-')[1]}-{n}" for n in again} & before  # finished samples were not asked again


def test_bad_input_is_named_before_any_request(tmp_path, capsys):
    data = write_data(tmp_path, ["q-a", "q-b", "q-c"])
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace('"answer": "D"', '"answer": "E"')  # not one of the options
    lines.append(lines[0])  # an id twice
    lines.append('{"id": "broken", ')
    lines.append(json.dumps({"id": "noimg", "image": "img/missing.png",
                             "conversations": [{"from": "human", "value": "<image>\nq"},
                                               {"from": "gpt", "value": "x"}]}))
    data.write_text("\n".join(lines) + "\n")
    with FakeOpenAI(Teacher()) as fake:
        assert run_teacher(fake, data, tmp_path / "o.jsonl") == 2
        assert fake.requests == []
        err = capsys.readouterr().err
        assert f"{data}:2 [id s1-q-b]: answer 'E' is none of the options" in err
        assert "id s0-q-a appears twice" in err and f"{data}:5" in err and "missing image" in err
        assert "nothing was sent" in err
        bad_template = tmp_path / "t.txt"
        bad_template.write_text("Question: {question} answer {answer} {colour}")
        assert run_teacher(fake, write_data(tmp_path, ["q-a"]), tmp_path / "o.jsonl",
                           "--prompt-template", str(bad_template)) == 2
        assert "unknown placeholder(s) {colour}" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            run_teacher(fake, data, tmp_path / "o.jsonl", "--workers", "0")
        assert e.value.code == 2 and fake.requests == []


def test_tsv_input_writes_images_next_to_out(tmp_path):
    from dataset.synth import generate
    from dataset.vqa_tsv import read_tsv
    paths = generate(tmp_path / "syn", 0, seed=1, n_test=3, progress=False)
    out = tmp_path / "teach" / "out.jsonl"
    with FakeOpenAI(lambda body: reply(good(_answer(body)))) as fake:
        assert run_teacher(fake, paths["tsv"], out) == 0
        assert fake.requests[0][2]["messages"][0]["content"][0]["type"] == "image_url"
    records = read_jsonl(out)
    rows = {r["index"]: r for r in read_tsv(paths["tsv"])}
    assert len(records) == 3
    for rec in records:
        assert rec["conversations"][0]["value"] == "<image>\n" + tsv_row_to_prompt(rows[rec["id"]])
        assert os.path.isfile(tmp_path / "teach" / rec["image"])
    assert inspect_cli.main([str(out)]) == 0  # images resolve from OUT's folder


def test_verify_llm_and_retry_rejected(tmp_path, capsys):
    data = write_data(tmp_path, ["q-valid", "q-invalid"])
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(Teacher()) as fake:
        assert run_teacher(fake, data, out, "--verify", "llm", "--api-retries", "1") == 0
        assert len(fake.requests) == 4  # a reply and a judgment each
    assert [r["id"] for r in read_jsonl(out)] == ["s0-q-valid"]
    assert read_jsonl(tmp_path / "out.rejected.jsonl")[0]["reasons"] == ["attempt 1: verify: judged invalid"]
    with FakeOpenAI(Teacher()) as fake:
        assert run_teacher(fake, data, out) == 0 and fake.requests == []  # done: nothing to ask
        assert run_teacher(fake, data, out, "--retry-rejected") == 0 and len(fake.requests) == 1
    assert {r["id"] for r in read_jsonl(out)} == {"s0-q-valid", "s1-q-invalid"}
    assert read_jsonl(tmp_path / "out.rejected.jsonl") == []  # accepted now: no longer rejected


def test_template_and_checks():
    template = load_template()
    assert all(tag in template for tag in STAGE_TAGS)
    task = Task("What colour?", COLOURS, "D", hint="the circle is small")
    text = fill_template(template, task)
    assert "What colour?" in text and "D. yellow" in text and "Hint: the circle is small" in text
    assert not re.search(r"\{\w+\}", text)
    assert fill_template("{question} {{literal}} {answer}", Task("q", {}, "two")) == "q {literal} two"
    assert format_check(good("D")) == []
    assert format_check("Sure! " + good("D")) == ["format: text outside the tags: 'Sure!'"]
    assert format_check(good("D").replace("One yellow circle.", " ")) == ["format: <CAPTION> is empty"]
    assert refusal_check("<SUMMARY> I cannot see the image. </SUMMARY>")[0].startswith("refusal")
    assert refusal_check(good("D")) == []
    assert leak_check("... as the hint says ...", task) and not leak_check(good("D"), task)
    free = Task("How many?", {}, "Three")
    assert answer_check("<CONCLUSION> three. </CONCLUSION>", free) == []
    assert answer_check("<CONCLUSION> four </CONCLUSION>", free)[0].startswith("answer:")
    assert answer_check("<CONCLUSION> yellow </CONCLUSION>", task) == []  # the option's text counts


def test_one_sample_failing_unexpectedly_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    import dataset.teacher as teacher_module
    data = write_data(tmp_path, ["q-a", "q-b", "q-c"])
    real = teacher_module.decode_image

    def flaky_decode(path, *a, **kw):
        if str(path).endswith("1.png"):
            raise RuntimeError("disk went away")
        return real(path, *a, **kw)

    monkeypatch.setattr(teacher_module, "decode_image", flaky_decode)
    with FakeOpenAI(Teacher()) as fake:
        assert run_teacher(fake, data, tmp_path / "o.jsonl", "--workers", "2") == 3
    assert {r["id"] for r in read_jsonl(tmp_path / "o.jsonl")} == {"s0-q-a", "s2-q-c"}
    assert "pending 1" in capsys.readouterr().out
