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
