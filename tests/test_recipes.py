"""`--recipe llava-cot`: the paper's settings as defaults, each still overridable, printed in full."""
import pytest

from finetune import arguments, launch
from finetune.recipes import RECIPES, describe


def parse(argv):
    return arguments.parse(argv, launcher=True)[0]


def test_recipe_sets_the_paper_settings():
    opts = parse(["--recipe", "llava-cot"])
    assert (opts.finetune_mode, opts.freeze, opts.lr, opts.epochs, opts.batch_size, opts.no_validation) == \
           ("full", "none", 1e-5, 3, 4, True)
    assert opts.train_iters is None
    plain = parse([])
    assert (plain.lr, plain.epochs, plain.batch_size, plain.no_validation) != (opts.lr, opts.epochs, opts.batch_size,
                                                                               opts.no_validation)


def test_each_recipe_value_can_be_overridden(monkeypatch):
    opts = parse(["--recipe", "llava-cot", "--lr", "2e-5", "--train-iters", "50"])
    assert opts.lr == 2e-5 and opts.train_iters == 50 and opts.epochs is None  # --train-iters drops the epochs
    assert opts.batch_size == 4
    monkeypatch.setenv("COGCOT_BATCH_SIZE", "8")
    monkeypatch.setenv("COGCOT_RECIPE", "llava-cot")
    opts = parse(["--finetune-mode", "lora"])
    assert opts.batch_size == 8 and opts.finetune_mode == "lora" and opts.lr == 1e-5


def test_recipe_is_printed_in_full_with_what_was_overridden():
    argv = ["--recipe", "llava-cot", "--lr", "3e-5"]
    text = describe("llava-cot", parse(argv), argv)
    values, _ = RECIPES["llava-cot"]
    for dest in values:
        assert "--" + dest.replace("_", "-") in text
    assert "--lr               1e-05 -> overridden (command line)" in text
    assert "this run uses: " in text and "--lr 3e-05" in text and "--epochs 3" in text


def test_recipe_runs_without_a_validation_split(tmp_path):
    opts = parse(["--recipe", "llava-cot", "--train-data", "t.jsonl"])
    argv = launch.finetune_argv(opts, [])
    assert "--no-validation" in argv and "--recipe" not in argv and argv[argv.index("--epochs") + 1] == "3"
    from finetune.finetune import sat_argv
    child = arguments.parse(argv + ["--valid-data", "v.jsonl"], launcher=False)[0]
    child.experiment_name, child.summary_dir = "x", str(tmp_path)
    sat = sat_argv(child, "ds.json", 0, None)
    assert "--valid-data" not in sat


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(arguments.ConfigError, match="unknown; choose from llava-cot"):
        parse(["--recipe", "nope"])
