"""benchmarks/finetune_learns.py's diagnosis: where a model's errors are (the caption it saw, the value it
named, the letter it gave), scored against the synthetic held-out answers."""
import json
import re
import subprocess
import sys
from pathlib import Path

from dataset import synth
from inference.evaluate import read_tsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import finetune_learns  # noqa: E402


def _records(data: Path):
    """Evaluation records for the held-out set: the reference answers, then three of them spoilt."""
    recs = []
    for line in (data / "test.jsonl").read_text().splitlines():
        item = json.loads(line)
        answer = item["conversations"][-1]["value"]
        letter = re.search(r"<CONCLUSION> (\w) </CONCLUSION>", answer).group(1)
        index = int(item["id"].rsplit("-", 1)[1])
        recs.append({"index": index, "response": answer, "prediction": letter, "correct": True})
    categories = {str(r["index"]): r["category"] for r in read_tsv(data / "test.tsv")}
    for r in recs:
        r["category"] = categories[str(r["index"])]
    return recs


def test_diagnosis_separates_seeing_from_answering(tmp_path):
    data = tmp_path / "data"
    synth.generate(data, n=0, seed=3, n_test=12, categories=["color", "count"], progress=False)
    recs = _records(data)
    colour = [r for r in recs if r["category"] == "color"]
    # a wrong caption and a wrong answer (seeing), then a right caption with a wrong letter (answering)
    colour[0]["response"] = re.sub(r"<CAPTION>.*?</CAPTION>", "<CAPTION> The image shows nothing. </CAPTION>",
                                   colour[0]["response"])
    colour[0]["correct"] = False
    colour[1]["correct"], colour[1]["prediction"] = False, "Z"
    path = tmp_path / "eval_after.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    d = finetune_learns.diagnose(path, data / "test.tsv")
    n = len(colour)
    assert d["color"]["n"] == n and d["count"]["n"] == 12 - n
    assert d["color"]["letter"] == (n - 2) / n
    assert d["color"]["caption"] == (n - 1) / n  # one caption spoilt
    assert d["color"]["right_when_seen"] == (n - 2) / (n - 1)  # of the right captions, one letter is wrong
    assert d["color"]["consistent"] == (n - 1) / n  # the letter "Z" is not the option the reasoning named
    assert d["count"] == {"letter": 1.0, "value": 1.0, "consistent": 1.0, "caption": 1.0, "n": 12 - n,
                          "right_when_seen": 1.0}

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune_learns.py"), "--records", str(path),
                          "--data", str(data)], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "caption exact" in out and "(n=12)" in out
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune_learns.py"), "--records",
                              str(path), "--data", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "test.tsv: no such file" in missing.stderr
