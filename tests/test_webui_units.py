"""The board's parts without a browser: the form <-> launcher command round trip, the root sandbox, the
child-process runner (clean stop, re-attach), the log readers and `python -m webui`'s own checks."""
import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("gradio", reason="the board needs the [web] extra")

from webui import logs  # noqa: E402
from webui.launch_options import (RUN_SH, form_argv, launcher_options, parse_argv, preview,  # noqa: E402
                                  script_text)
from webui.paths import OutsideRoot, Root  # noqa: E402
from webui.runner import Runner  # noqa: E402


def test_form_has_every_launcher_option_with_its_default():
    from finetune import arguments
    parser = arguments.build_parser(launcher=True)
    want = {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}
    got = {o.dest: o.default for o in launcher_options()}
    assert got == want
    groups = {o.group for o in launcher_options()}
    assert {"model", "data", "what trains", "DeepSpeed and processes"} <= groups


def test_untouched_form_is_the_bare_command_and_changes_round_trip(tmp_path):
    options = launcher_options()
    defaults = [o.default if o.kind in ("flag", "choice") else o.shown_default for o in options]
    root = Root(str(tmp_path))
    cmd, problem = preview(options, defaults, "", root)
    assert problem is None and cmd == ["bash", str(RUN_SH)]
    values = list(defaults)
    changes = {"train_iters": "7", "lr": "0.01", "finetune_mode": "lora", "skip_accuracy": True,
               "valid_data": "a.jsonl, b.jsonl"}
    for i, o in enumerate(options):
        if o.dest in changes:
            values[i] = changes[o.dest]
    argv = form_argv(options, values, "--checkpoint-activations")
    opts, rest = parse_argv(argv)
    assert (opts.train_iters, opts.lr, opts.finetune_mode, opts.skip_accuracy) == (7, 0.01, "lora", True)
    assert opts.valid_data == ["a.jsonl", "b.jsonl"] and rest == ["--checkpoint-activations"]
    assert "cd " in script_text(["bash", "x.sh", "--lr", "1 2"], tmp_path) and "'1 2'" in script_text(
        ["bash", "x.sh", "--lr", "1 2"], tmp_path)


def test_bad_values_and_paths_outside_the_root_are_refused(tmp_path):
    options = launcher_options()
    root = Root(str(tmp_path))

    def with_(dest, value):
        return [value if o.dest == dest else (o.default if o.kind in ("flag", "choice") else o.shown_default)
                for o in options]
    cmd, problem = preview(options, with_("train_iters", "seven"), "", root)
    assert cmd == [] and "--train-iters" in problem and "seven" in problem
    cmd, problem = preview(options, with_("train_data", "../elsewhere.jsonl"), "", root)
    assert cmd == [] and "outside the board's root" in problem
    with pytest.raises(OutsideRoot):
        root.resolve("/etc/passwd")
    assert root.resolve("sub/x.json") == tmp_path.resolve() / "sub" / "x.json"


CHILD = """
import signal, sys, time
def bye(*_):
    print("got SIGINT, saving", flush=True); sys.exit(3)
signal.signal(signal.SIGINT, bye)
print("[train] step 1/9 | loss 1.5 | lr 1e-3 | 1 samples/s | 1 tok/s | elapsed 0m01s | ETA 0m08s", flush=True)
time.sleep(60)
"""


def _until(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_runner_stops_a_child_with_sigint_and_a_new_runner_reattaches(tmp_path):
    root = Root(str(tmp_path))
    runner = Runner(root, "train")
    state = runner.start([sys.executable, "-c", CHILD])
    assert _until(lambda: "step 1/9" in logs.read_text(state.log))
    again = Runner(root, "train")  # what a restarted board sees
    assert again.current().running and again.current().pid == state.pid
    with pytest.raises(RuntimeError, match="still going"):
        runner.start([sys.executable, "-c", "pass"])
    runner.stop()
    assert _until(lambda: not runner.current().running)
    ended = runner.current()
    assert ended.status == "stopped" and ended.returncode == 3
    assert "got SIGINT" in logs.read_text(ended.log)
    p = logs.progress(logs.read_text(ended.log))
    assert (p["step"], p["total"], p["eta"]) == (1, 9, "0m08s")


def test_failed_child_is_reported_failed(tmp_path):
    runner = Runner(Root(str(tmp_path)), "eval")
    runner.start([sys.executable, "-c", "import sys; sys.exit(5)"])
    assert _until(lambda: not runner.current().running)
    assert runner.current().status == "failed" and runner.current().returncode == 5


def test_train_log_reader_and_accuracy_table(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 1, "loss": 2.0, "lr": 1e-3}, {"kind": "train", "step": 2, "loss": 1.5, "lr": 5e-4},
        {"kind": "valid", "step": 2, "loss": 1.7}]) + '\n{"kind": "tra')  # a half-written last line
    h = logs.train_log(path)
    assert [r["step"] for r in h["train"]] == [1, 2] and h["valid"][0]["loss"] == 1.7
    loss_fig, lr_fig = logs.curves(h)
    assert loss_fig is not None and lr_fig is not None
    table = logs.accuracy_table({"accuracy": 0.25, "n": 4, "per_category": {"color": 0.5}},
                                {"accuracy": 0.75, "n": 4, "per_category": {"color": 1.0}, "counts": {"color": 2}})
    assert "| **overall** | 4 | 25.0% | 75.0% |" in table and "| color | 2 | 50.0% | 100.0% |" in table


def _webui(*args, env_extra=None, code=""):
    import os
    env = dict(os.environ, **(env_extra or {}))
    entry = "import sys, webui.__main__ as m; sys.exit(m.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code + entry, *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_other_hosts_need_auth_and_missing_gradio_names_the_install(tmp_path):
    r = _webui("--host", "0.0.0.0", "--root", str(tmp_path))
    assert r.returncode == 2 and "--auth" in r.stderr
    r = _webui("--auth", "nopassword", "--root", str(tmp_path))
    assert r.returncode == 2 and "USER:PASSWORD" in r.stderr
    r = _webui("--root", str(tmp_path), code="import sys; sys.modules['gradio'] = None\n")
    assert r.returncode == 1 and 'pip install -e ".[web]"' in r.stderr


def test_staged_search_reports_candidates_and_matches_as_they_happen(tiny_vlm):
    """The on_event hook the Chat tab draws from: per step, the candidates first, then each match, then on_step."""
    import torch
    from PIL import Image

    from inference.options import SearchOptions
    from inference.search import StagedSearch
    model, tokenizer = tiny_vlm
    events = []
    options = SearchOptions(mode="stage", n=3, max_step_tokens=3)
    search = StagedSearch(model, tokenizer, judge="logprob", options=options)
    with torch.no_grad():
        result = search(Image.new("RGB", (40, 40), (200, 30, 30)), "What colour?",
                        on_step=lambda st: events.append(("step", st.name, st.winner)),
                        on_event=lambda kind, data: events.append((kind, data.get("stage"))))
    per_step = [events[i:i + 4] for i in range(0, len(events), 4)]  # n=3: candidates, 2 matches, the step
    assert len(per_step) == len(result.steps) >= 1
    for chunk, step in zip(per_step, result.steps):
        assert [e[0] for e in chunk] == ["candidates", "match", "match", "step"]
        assert {e[1] for e in chunk} == {step.name} and chunk[-1][2] == step.winner
