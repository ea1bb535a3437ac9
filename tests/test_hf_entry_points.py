"""The Hugging Face layout through the user's entry points: the CLI demo and the fine-tuning checks."""
import io

import pytest

import models.cogvlm  # noqa: F401  SAT binds its log handler to sys.stderr at first import: do it outside capsys
from finetune import arguments
from inference import cli_demo
from models.convert import sat_to_hf


def test_cli_demo_chats_with_an_hf_directory(sat_dir, tmp_path, monkeypatch, capsys, one_thread):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", progress=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("\nWhat is this?\nstop\n"))  # no image, one question
    assert cli_demo.main(["--from_pretrained", str(hf), "--max_new_tokens", "3"]) == 0
    out = capsys.readouterr()
    assert "text-only" in out.out and "Model: " in out.out, out.err


def test_finetune_checks_accept_an_hf_directory(sat_dir, tmp_path):
    hf = sat_to_hf(sat_dir, tmp_path / "hf", progress=False)
    data = tmp_path / "d.jsonl"
    data.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n')  # not empty: an empty file is refused
    opts, _ = arguments.parse(["--from-pretrained", str(hf), "--train-data", str(data)], launcher=False)
    arguments.check(opts, cuda=False)
    (hf / "config.json").unlink()
    with pytest.raises(arguments.ConfigError, match="neither model_config.json"):
        arguments.check(opts, cuda=False)
