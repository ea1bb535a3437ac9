"""`python -m dataset.inspect`: counts, histogram, the marked training text, problems, exit codes."""
import runpy
import sys

import pytest

from dataset.inspect import main


def conv(rid, image="a.png", answer="two circles"):
    return {"id": rid, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nHow many circles?"}, {"from": "gpt", "value": answer}]}


def args(path, tok, *extra):
    return [str(path), "--tokenizer", tok.model_file, "--image-length", "4", *extra]


def test_clean_data_exits_0_and_shows_the_trained_text(tiny_tokenizer, write_records, capsys):
    path = write_records([conv("r1"), conv("r2", image="b.png", answer="red")], images=("a.png", "b.png"))
    assert main(args(path, tiny_tokenizer)) == 0
    out = capsys.readouterr().out
    assert "records: 2 read, 2 parsed" in out and "2 decoded, 0 unreadable" in out
    assert "<s> <image: 6 tokens> Question: How many circles? Answer: ⟦two circles </s>⟧" in out
    assert "0 problem(s)" in out


def test_problems_exit_1_with_file_and_line(tiny_tokenizer, write_records, tmp_path, capsys):
    path = write_records([conv("r1"), "{oops", conv("r3", image="gone.png"), conv("r4", image="bad.png")],
                         images=("a.png",))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(args(path, tiny_tokenizer)) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: bad JSON line" in out
    assert f"{path}:3 [id r3]: missing image" in out
    assert f"{path}:4 [id r4]: image {tmp_path / 'bad.png'}: not a readable image" in out
    assert "3 problem(s)" in out
    assert main(args(path, tiny_tokenizer, "--strict")) == 1  # stops at the first one
    assert "problem: " in capsys.readouterr().out


def test_max_length_report(tiny_tokenizer, write_records, capsys):
    path = write_records([conv("short", answer="red"), conv("long", answer="red " * 40)], images=("a.png",))
    # BOS + image span (6) + question ~10 tokens fits in 24; the long answer gets truncated.
    assert main(args(path, tiny_tokenizer, "--max-length", "24")) == 0
    out = capsys.readouterr().out
    assert "max_length 24 cuts 1 sample(s): 1 truncated, 0 cannot fit" in out and "> max_length" in out
    assert main(args(path, tiny_tokenizer, "--max-length", "6")) == 1  # the image span cannot fit
    assert "truncating would cut an image span" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_runs_as_a_module_with_the_default_tokenizer(write_records, monkeypatch, capsys):
    """`python -m dataset.inspect` (run in-process: a subprocess would pay the SAT import again)."""
    path = write_records([conv("r1", image="missing.png")])
    monkeypatch.setattr(sys, "argv", ["inspect", str(path), "--image-length", "4"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dataset.inspect", run_name="__main__")
    assert exit_info.value.code == 1
    assert f"{path}:1 [id r1]: missing image" in capsys.readouterr().out


def test_truncation_and_image_conversions_are_reported(tiny_tokenizer, write_records, tmp_path, capsys):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (4, 1))).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (9, 5)).save(tmp_path / "turned.png", exif=exif)
    Image.new("RGBA", (6, 6), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    path = write_records([conv("short", image="deep.png", answer="red"), conv("long", image="turned.png",
                          answer="red " * 40), conv("third", image="clear.png", answer="blue")])
    assert main(args(path, tiny_tokenizer, "--max-length", "24")) == 0
    out = capsys.readouterr().out
    assert "image conversions: 1 16-bit scaled to 8 bit, 1 turned by their EXIF orientation, " \
           "1 with transparency composited on white" in out
    assert "max_length 24 cuts 1 sample(s): 1 truncated, 0 cannot fit (truncated: cut at the end, no EOS" in out
    assert main(args(path, tiny_tokenizer, "--max-length", "24", "--truncation", "drop")) == 0  # chosen: no problem
    assert "max_length 24 cuts 1 sample(s): 1 dropped (--truncation drop)" in capsys.readouterr().out


def test_empty_data_file_is_a_problem(tiny_tokenizer, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(args(empty, tiny_tokenizer)) == 1
    out = capsys.readouterr().out
    assert f"{empty}: no samples: the file is empty" in out and "1 problem(s)" in out
