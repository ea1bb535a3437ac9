"""inference.evaluate: answers from <CONCLUSION> (letter or option text), records and accuracy tables
on a TSV written by dataset.synth, the Python API and the command line."""
import json

import pytest

from dataset.synth import generate
import inference.evaluate as ev
from inference.evaluate import evaluate, extract_conclusion, match_option, predict

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = {"A": "red", "B": "dark red", "C": "3", "D": "circle"}


@pytest.fixture(scope="module")
def synth_tsv(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate(out, n=0, seed=3, n_test=6, progress=False)["tsv"]


@pytest.mark.parametrize("response,letter", [
    ("<SUMMARY> s </SUMMARY> <CONCLUSION> B </CONCLUSION>", "B"),
    ("<CONCLUSION> (C) </CONCLUSION>", "C"),
    ("<CONCLUSION> The answer is D. </CONCLUSION>", "D"),
    ("<CONCLUSION> So the answer is dark red, option B. </CONCLUSION>", "B"),
    ("<CONCLUSION> A. red </CONCLUSION>", "A"),
    ("<CONCLUSION> It is a circle. </CONCLUSION>", "D"),  # option text; "a" is an article, not option A
    ("<CONCLUSION> dark red </CONCLUSION>", "B"),  # the longer option text wins over "red" inside it
    ("<CONCLUSION> There are 3 of them", "C"),  # unclosed conclusion: to the end
    ("<REASONING> option A is wrong </REASONING> <CONCLUSION> B </CONCLUSION>", "B"),  # only the conclusion
    ("no tags, just C", "C"),
    ("<CONCLUSION> I cannot tell. </CONCLUSION>", None),
    ("<CONCLUSION> red or circle </CONCLUSION>", None),
])
def test_answer_from_conclusion(response, letter):
    assert predict(response, OPTIONS)[0] == letter


def test_extract_conclusion_takes_the_last_one():
    assert extract_conclusion("<CONCLUSION> A </CONCLUSION> then <CONCLUSION> C </CONCLUSION>") == "C"
    assert match_option("E", OPTIONS) == (None, "none")  # not an option of this question


def test_evaluate_writes_records_and_prints_per_category(tiny_vlm, synth_tsv, tmp_path, capsys):
    model, tok = tiny_vlm
    out = tmp_path / "results.jsonl"
    model.train()
    result = evaluate(model, tok, synth_tsv, mode="greedy", batch_size=4, max_new_tokens=3, out_path=out)
    assert model.training  # the model's mode is restored
    model.eval()
    assert set(result) >= {"accuracy", "per_category", "n", "records"} and result["n"] == 6
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records == result["records"] and [r["index"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert {"index", "category", "answer", "prediction", "correct", "response"} <= set(r)
        assert r["correct"] == (r["prediction"] == r["answer"]) and isinstance(r["correct"], bool)
    cats = {r["category"] for r in records}
    assert set(result["per_category"]) == cats and len(cats) == 6
    printed = capsys.readouterr().out
    assert all(c in printed for c in cats) and "overall (greedy)" in printed


def test_accuracy_is_computed_from_the_conclusions(tiny_vlm, synth_tsv, monkeypatch):
    """With answers planted in the decoder's output: right on rows 1, 3, 5, wrong (or unreadable) elsewhere."""
    model, tok = tiny_vlm
    rows = ev.read_tsv(synth_tsv)
    truth = {r["question"] + r["A"]: r for r in rows}

    def fake_generate(model, prompts, embeds, *, tokenizer, **kw):
        out = []
        for p in prompts:
            text = tokenizer.decode(p.input_ids)
            row = next(r for key, r in truth.items() if r["question"] in text and f"A. {r['A']}" in text)
            answer = row["answer"] if int(row["index"]) % 2 else ("A" if row["answer"] != "A" else "B")
            if row["index"] == "6":
                answer = "no idea"
            out.append(type("Row", (), {"tokens": tokenizer.encode(f"<CONCLUSION> {answer} </CONCLUSION>",
                                                                   add_special_tokens=False)})())
        return out

    monkeypatch.setattr(ev, "generate_batch", fake_generate)
    result = evaluate(model, tok, synth_tsv, batch_size=4, progress=False)
    assert result["accuracy"] == pytest.approx(0.5)
    by_index = {r["index"]: r for r in result["records"]}
    assert [by_index[i]["correct"] for i in range(1, 7)] == [True, False, True, False, True, False]
    assert by_index[6]["prediction"] is None and by_index[1]["matched_by"] == "letter"


def test_search_modes_and_command_line(tiny_vlm, synth_tsv, tmp_path, capsys):
    model, tok = tiny_vlm
    result = evaluate(model, tok, synth_tsv, mode="stage", n=2, judge="logprob", limit=1, max_new_tokens=8,
                      progress=False, search_options=ev.SearchOptions(max_step_tokens=2))
    assert result["n"] == 1 and result["records"][0]["mode"] == "stage"
    out = tmp_path / "cli.jsonl"
    rc = ev.main(["--from_pretrained", "cogvlm-tiny", "--data", str(synth_tsv), "--mode", "greedy", "--limit", "2",
                  "--batch-size", "2", "--max-new-tokens", "2", "--out", str(out), "--no-progress"])
    assert rc == 0 and len(out.read_text().splitlines()) == 2
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["n"] == 2 and "overall" in printed
    assert ev.main(["--data", str(tmp_path / "missing.tsv")]) == 1


# ----------------------------------------------------------------------------- nothing is lost

def _png_b64(colour=(200, 30, 30)):
    import base64
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path, rows, columns=("index", "image", "image_path", "question", "A", "B", "C", "D", "answer",
                                    "category")):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), delimiter="\t", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def _row(index, **kw):
    return dict({"index": index, "image": _png_b64(), "question": f"Question {index}?", "A": "red", "B": "green",
                 "C": "blue", "D": "yellow", "answer": "A", "category": "color"}, **kw)


def _planted(answers):
    """A stand-in for generate_batch answering each prompt with answers[question index]; records the calls."""
    calls = []

    def fake(model, prompts, embeds, *, tokenizer, **kw):
        out = []
        for p in prompts:
            text = tokenizer.decode(p.input_ids)
            index = next(k for k in answers if f"Question {k}?" in text)
            calls.append(index)
            out.append(type("Row", (), {"tokens": tokenizer.encode(f"<CONCLUSION> {answers[index]} </CONCLUSION>",
                                                                   add_special_tokens=False)})())
        return out
    return fake, calls


def test_records_are_written_as_finished_and_a_rerun_resumes(tiny_vlm, tmp_path, monkeypatch):
    model, tok = tiny_vlm
    tsv = _write_tsv(tmp_path / "q.tsv", [_row(i) for i in range(1, 6)])
    out = tmp_path / "out.jsonl"
    fake, calls = _planted({1: "A", 2: "B", 3: "A", 4: "C", 5: "A"})

    def crash_on_second_batch(*a, **kw):
        if calls:
            assert len(out.read_text().splitlines()) == 2  # the first batch is on disk before the next starts
            raise KeyboardInterrupt
        return fake(*a, **kw)

    monkeypatch.setattr(ev, "generate_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, tok, tsv, batch_size=2, out_path=out, progress=False)
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(first) == 2 and all(r["response"] for r in first)
    with open(out, "a") as f:
        f.write('{"index": 5, "category": "col')  # a record cut short by a crash: dropped, row 5 runs again
    monkeypatch.setattr(ev, "generate_batch", fake)
    calls.clear()
    result = evaluate(model, tok, tsv, batch_size=2, out_path=out, progress=False, resume=True)
    assert sorted(calls) == sorted(set(range(1, 6)) - {r["index"] for r in first})  # only what was missing
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [1, 2, 3, 4, 5] and records == result["records"]
    assert [r for r in records if r["index"] in {f["index"] for f in first}] == first  # kept as they were
    assert result["accuracy"] == pytest.approx(3 / 5)
    with pytest.raises(ev.EvalDataError, match="another run"):  # never mixes two runs' answers
        evaluate(model, tok, tsv, mode="stage", out_path=out, progress=False, resume=True)
    calls.clear()
    evaluate(model, tok, tsv, batch_size=8, out_path=out, progress=False)  # resume=False: starts over
    assert sorted(calls) == [1, 2, 3, 4, 5]


def test_bad_rows_are_errors_of_their_own_and_the_run_goes_on(tiny_vlm, tmp_path, monkeypatch, capsys):
    model, tok = tiny_vlm
    from PIL import Image
    images = tmp_path / "data"
    images.mkdir()
    Image.new("RGB", (12, 12)).save(images / "ok.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (12, 12)).save(outside)
    (images / "link.png").symlink_to(outside)
    rows = [_row(1), _row(2, image="bm90IGFuIGltYWdl"), _row(3, A="", B="", C="", D=""),
            _row(4, image="", image_path="ok.png"), _row(5, image="", image_path="../secret.png"),
            _row(6, image="", image_path="link.png"), _row(7, image="", image_path=str(outside)),
            _row(8, answer="E")]
    tsv = _write_tsv(images / "q.tsv", rows)
    fake, calls = _planted({1: "A", 4: "E"})
    monkeypatch.setattr(ev, "generate_batch", fake)
    out = tmp_path / "out.jsonl"
    result = evaluate(model, tok, tsv, batch_size=3, out_path=out)
    by = {r["index"]: r for r in result["records"]}
    assert sorted(calls) == [1, 4] and result["n"] == 8 and result["errors"] == 6
    assert by[1]["correct"] and by[1]["matched_by"] == "letter"
    assert by[4]["prediction"] == "E" and by[4]["matched_by"] == "not_an_option" and not by[4]["correct"]
    assert "not a readable image" in by[2]["error"]
    assert "no options" in by[3]["error"]
    assert "leaves the image root" in by[5]["error"]
    assert "leaves the image root" in by[6]["error"] and "symlink" in by[6]["error"]
    assert "leaves the image root" in by[7]["error"]  # an absolute path outside the root too
    assert "answer 'E' is not one of the row's options" in by[8]["error"]
    assert all(by[i]["matched_by"] == "error" and not by[i]["correct"] for i in (2, 3, 5, 6, 7, 8))
    assert result["accuracy"] == pytest.approx(1 / 8)
    printed = capsys.readouterr()
    assert "[error] row index 2: image: " in printed.err and "6 row(s) could not be evaluated" in printed.out
    assert "1 prediction(s) named a letter that is not among the row's options" in printed.out
    # --image-root moves where image_path resolves
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.new("RGB", (12, 12)).save(other / "ok.png")
    moved = _write_tsv(tmp_path / "moved.tsv", [_row(4, image="", image_path="ok.png")])
    assert evaluate(model, tok, moved, progress=False)["errors"] == 1  # not beside this TSV
    assert evaluate(model, tok, moved, progress=False, image_root=str(other))["errors"] == 0


def test_a_tsv_without_answers_or_rows_is_an_error(tmp_path, capsys):
    no_answer = _write_tsv(tmp_path / "a.tsv", [_row(1)], columns=("index", "image", "question", "A", "B"))
    no_rows = _write_tsv(tmp_path / "b.tsv", [])
    for path, reason in ((no_answer, "no 'answer' column"), (no_rows, "no rows after the header line")):
        with pytest.raises(ev.EvalDataError, match=reason):
            ev.read_tsv(path)
        assert ev.main(["--data", str(path), "--no-progress"]) == 2
        assert reason in capsys.readouterr().err


def test_judge_fallbacks_are_counted_in_the_records(tiny_vlm, tmp_path):
    from inference.judges import Judge, Verdict

    class Unsure(Judge):
        name = "unsure"

        def __call__(self, match, a, b):
            return Verdict(0, "could not parse the verdict", "", fallback=match.kind != "summary")

    model, tok = tiny_vlm
    tsv = _write_tsv(tmp_path / "q.tsv", [_row(1)])
    out = tmp_path / "out.jsonl"
    evaluate(model, tok, tsv, mode="stage", n=2, judge=Unsure(), max_new_tokens=8, out_path=out, progress=False,
             search_options=ev.SearchOptions(max_step_tokens=2))
    record = json.loads(out.read_text())
    assert record["judgments"] == 4 and record["judge_fallbacks"] == 3  # one match per stage; summary's was sure
