"""python -m inference.cli_demo driven through stdin on the tiny model: chat, clear, stop, errors as
messages, staged search showing each stage as it is chosen."""
import io
import os

import pytest
from PIL import Image

import models.cogvlm  # noqa: F401  SAT binds its log handler to sys.stderr at first import: do it outside capsys
from inference import cli_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def _drive(monkeypatch, capsys, lines, *args):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = cli_demo.main(["--from_pretrained", "cogvlm-tiny", *args])
    return rc, capsys.readouterr()


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(path)
    return str(path)


def test_chat_clear_and_stop(monkeypatch, capsys, image_path, tmp_path):
    lines = [image_path, "What color is it?", "And now?", "clear",
             str(tmp_path / "missing.png"),  # a message, then the image prompt again
             image_path, "Again?", "stop"]
    rc, out = _drive(monkeypatch, capsys, lines, "--max_new_tokens", "3")
    assert rc == 0
    assert out.out.count("Please enter the image path: ") == 3
    assert out.out.count("Model: ") == 3
    assert "missing.png: no such file" in out.out


def test_end_of_input_quits_and_text_only_chat(monkeypatch, capsys):
    rc, out = _drive(monkeypatch, capsys, ["", "Hello?"], "--max_new_tokens", "2")
    assert rc == 0, out.err
    assert "text-only" in out.out and "Model: " in out.out


def test_stage_search_shows_each_stage(monkeypatch, capsys, image_path, tmp_path):
    log = tmp_path / "judge.jsonl"
    rc, out = _drive(monkeypatch, capsys, [image_path, "What color is the shape?", "stop"], "--stage-search", "2",
                     "--judge", "logprob", "--max-stage-tokens", "2", "--judge-log", str(log))
    assert rc == 0
    shown = [line.strip().split("]")[0] + "]" for line in out.out.splitlines() if line.strip().startswith("[")]
    assert [s for s in shown if s in ("[SUMMARY]", "[CAPTION]", "[REASONING]", "[CONCLUSION]")] == [
        "[SUMMARY]", "[CAPTION]", "[REASONING]", "[CONCLUSION]"]
    assert len(log.read_text().splitlines()) == 4


def test_bad_checkpoint_is_a_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("stop\n"))
    assert cli_demo.main(["--from_pretrained", str(tmp_path / "nope")]) == 1
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model_config.json").write_text("{ broken")
    assert cli_demo.main(["--from_pretrained", str(tmp_path / "ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.count("error: cannot load") == 2 and "invalid JSON" in err


def test_question_with_bytes_that_are_not_utf8_gets_a_message(monkeypatch, capsys, image_path, tmp_path):
    latin1 = os.fsencode(tmp_path) + b"/rouge\xe9.png"  # a file name in another encoding (Latin-1) opens
    with open(latin1, "wb") as f:
        Image.new("RGB", (20, 20), (200, 0, 0)).save(f, "PNG")
    raw = (image_path.encode() + b"\n" + b"caf\xe9?\n" + b"What color is it?\n" + b"clear\n"
           + os.fsencode(tmp_path) + b"/caf\xe9.png\n" + latin1 + b"\nAnd this one?\nstop\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))  # strict, like a terminal
    rc = cli_demo.main(["--from_pretrained", "cogvlm-tiny", "--max_new_tokens", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "error: the question is not UTF-8 text (byte(s) e9 at character 4)" in out
    assert out.count("Model: ") == 2  # the bad question is not sent; the next one is answered, and the Latin-1 image's
    assert "caf\ufffd.png: no such file" in out  # a bad path is reported too (shown with U+FFFD), no crash


def test_sampling_defaults_say_what_they_do():
    from inference.options import GREEDY, OFFICIAL_DEMO_SAMPLING, SamplingOptions
    default = SamplingOptions()
    assert default.greedy and default == GREEDY
    assert (default.temperature, default.top_p, default.top_k) == (0.0, 1.0, 0)  # nothing that reads as sampling
    assert not SamplingOptions(temperature=0.8).greedy  # a temperature alone samples
    assert OFFICIAL_DEMO_SAMPLING.greedy and (OFFICIAL_DEMO_SAMPLING.temperature, OFFICIAL_DEMO_SAMPLING.top_p,
                                              OFFICIAL_DEMO_SAMPLING.top_k) == (0.8, 0.4, 1)
    parse = lambda *a: cli_demo.sampling_from_args(cli_demo.build_parser().parse_args(list(a)))
    assert parse() == GREEDY.replace(max_new_tokens=512)
    assert not parse("--temperature", "0.7").greedy and parse("--temperature", "0.7").top_k == 0
    assert parse("--official-demo-sampling") == OFFICIAL_DEMO_SAMPLING.replace(max_new_tokens=512)
    assert parse("--official-demo-sampling", "--top_k", "0").temperature == 0.8
    assert not parse("--official-demo-sampling", "--top_k", "0").greedy
    assert cli_demo.describe_sampling(parse()).startswith("greedy")
