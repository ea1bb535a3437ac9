"""The Train tab: the launcher's options as a form, the data preview, the exact command (copy or download),
Start / Stop of `bash finetune/run.sh`, and the live view of the run (log, progress, curves, results)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

import gradio as gr

from . import data_preview, logs
from .launch_options import Option, command_line, groups, launcher_options, preview, script_text
from .paths import OutsideRoot, Root
from .runner import Runner



def _component(o: Option):
    common = dict(label=o.flag, info=o.help, elem_id=f"opt-{o.dest}", min_width=240)
    if o.kind == "flag":
        return gr.Checkbox(value=bool(o.default), **common)
    if o.kind == "choice":
        return gr.Dropdown(choices=list(o.choices), value=o.default, **common)
    return gr.Textbox(value=o.shown_default, placeholder=None if o.shown_default else "(default)", **common)


def _opt_value(options: List[Option], values, dest: str) -> Any:
    for o, v in zip(options, values):
        if o.dest == dest:
            return v
    return None


class TrainTab:
    """Builds the tab inside the current gr.Blocks and wires its events."""

    def __init__(self, root: Root):
        self.root = root
        self.runner = Runner(root, "train")
        self.options = launcher_options()

    # -- layout --------------------------------------------------------------------------------
    def build(self) -> None:
        inputs = []
        with gr.Row():
            with gr.Column(scale=3):
                for title, opts in groups(self.options).items():
                    with gr.Accordion(title, open=True):
                        with gr.Row():
                            for o in opts:
                                inputs.append(_component(o))
                self.extra = gr.Textbox(label="more SAT options", info="handed to SwissArmyTransformer unchanged, "
                                        "e.g. --checkpoint-activations", elem_id="train-extra")
            with gr.Column(scale=2):
                with gr.Row():
                    preview_btn = gr.Button("Preview command", elem_id="train-preview")
                    data_btn = gr.Button("Preview data", elem_id="train-data-preview")
                    start_btn = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
                self.message = gr.Markdown(elem_id="train-message")
                self.command = gr.Textbox(label="command (run from the board's root)", lines=2, buttons=["copy"],
                                          interactive=False, elem_id="train-command")
                self.script = gr.File(label="as a script", interactive=False, height=90, elem_id="train-script")
                self.status = gr.Markdown("no run yet", elem_id="train-status")
                self.progress = gr.HTML(elem_id="train-progress")
                with gr.Row():
                    self.loss_plot = gr.Plot(label="loss", elem_id="train-loss")
                    self.lr_plot = gr.Plot(label="learning rate", elem_id="train-lr")
                self.valid = gr.Markdown(elem_id="train-valid")
                self.result = gr.Markdown(elem_id="train-result")
                self.chat_cmd = gr.Textbox(label="chat with the result", buttons=["copy"], interactive=False,
                                           elem_id="train-chat-command")
                self.log = gr.Textbox(label="log (tail)", lines=14, max_lines=14, autoscroll=True, interactive=False,
                                      elem_id="train-log")
        with gr.Accordion("data preview (dataset.inspect)", open=False) as self.data_box:
            self.data_counts = gr.Markdown(elem_id="data-counts")
            self.data_hist = gr.Plot(label="token lengths")
            self.data_sample = gr.HighlightedText(label="one sample as trained", color_map={"trained": "green"},
                                                  combine_adjacent=True, elem_id="data-sample")
            self.data_problems = gr.Markdown(elem_id="data-problems")
        self.inputs = inputs
        seen = gr.State(None)  # what the plots were last drawn from (skip redrawing the same)
        live = [self.status, self.progress, self.loss_plot, self.lr_plot, self.valid, self.result, self.chat_cmd,
                self.log, seen]
        everything = inputs + [self.extra]
        preview_btn.click(self.preview, everything, [self.message, self.command, self.script])
        data_btn.click(self.preview_data, everything,
                       [self.message, self.data_counts, self.data_hist, self.data_sample, self.data_problems,
                        self.data_box])
        start_btn.click(self.start, everything, [self.message, self.command, self.script])
        stop_btn.click(self.stop, None, [self.message])
        gr.Timer(1.0).tick(self.refresh, [seen], live)
        self.load_event = (self.refresh, [seen], live)

    # -- events --------------------------------------------------------------------------------
    def _split(self, values):
        return list(values[:-1]), values[-1]

    def _command(self, values):
        """(command, problem, script path) of the form's values."""
        form, extra = self._split(values)
        cmd, problem = preview(self.options, form, extra, self.root)
        if problem:
            return [], f"**cannot run:** {problem}", None
        script = self.root.state_dir("train") / "run-command.sh"
        script.write_text(script_text(cmd, self.root.path))
        return cmd, "", str(script)

    def preview(self, *values):
        cmd, problem, script = self._command(values)
        return problem, command_line(cmd) if cmd else "", script

    def start(self, *values):
        cmd, problem, script = self._command(values)
        if not cmd:
            return problem, "", script
        try:
            self.runner.start(cmd)
        except (RuntimeError, OSError) as e:
            return f"**cannot start:** {e}", command_line(cmd), script
        return "started", command_line(cmd), script

    def stop(self):
        state = self.runner.stop()
        if state is None:
            return "no run to stop"
        if state.ended is not None:
            return f"the run had already {state.status}"
        return "stopping: SIGINT sent to the run's processes (SIGTERM follows if it does not end)"

    def preview_data(self, *values):
        form, _ = self._split(values)
        files = _opt_value(self.options, form, "train_data") or ""
        files = files.replace(",", " ").split()
        nothing = ("", None, None, "", gr.skip())
        if not files:
            return ("no --train-data given: the run generates synthetic data when it starts "
                    "(give a file to preview it)", *nothing)
        try:
            paths = [str(self.root.existing(f, "--train-data")) for f in files]
            image_root = _opt_value(self.options, form, "image_root") or None
            if image_root:
                image_root = str(self.root.existing(image_root, "--image-root", kind="dir"))
            tokenizer = _opt_value(self.options, form, "tokenizer") or None
            if tokenizer:
                tokenizer = str(self.root.existing(tokenizer, "--tokenizer"))
        except OutsideRoot as e:
            return f"**cannot preview:** {e}", *nothing
        model = _opt_value(self.options, form, "from_pretrained") or "cogvlm-tiny"
        max_length = (_opt_value(self.options, form, "max_length") or "").strip()
        cmd = data_preview.inspect_command(paths, image_root, int(max_length) if max_length.isdigit() else None,
                                           _opt_value(self.options, form, "template") or None,
                                           _opt_value(self.options, form, "truncation") or "cut",
                                           _image_length(model, self.root), tokenizer)
        code, text = data_preview.run_inspect(cmd, self.root.path)
        if code not in (0, 1):
            return f"**the inspector failed** (exit {code}):\n```\n{text[-3000:]}\n```", *nothing
        report = data_preview.split_report(text)
        counts = "\n".join(f"- {line}" for line in report["counts"])
        problems = ("**problems:**\n" + "\n".join(f"- `{p}`" for p in report["problems"])) if report["problems"] \
            else "no problems found"
        return ("", counts, data_preview.histogram_figure(report["histogram"]),
                data_preview.marked_spans(report["sample"]), problems, gr.Accordion(open=True))

    def refresh(self, seen):
        """Everything the live view shows, from the run's state file, its log and its checkpoint folder."""
        state = self.runner.current()
        if state is None:
            return ("no run yet", "", gr.skip(), gr.skip(), "", "", "", "", seen)
        text = logs.read_text(state.log)
        run = logs.run_dir(text, state.cwd)
        status = _status_line(state, run)
        prog = logs.progress(text)
        bar = ""
        if prog:
            bar = logs.progress_html(prog["step"], prog["total"], f"step {prog['step']}/{prog['total']} · loss "
                                     f"{prog['loss']:.4f} · elapsed {prog['elapsed']} · ETA {prog['eta']}")
        history_path = run / "train_log.jsonl" if run else None
        key = None
        if history_path is not None and history_path.is_file():
            st = history_path.stat()
            key = f"{history_path}:{st.st_size}:{st.st_mtime_ns}"
        loss_fig = lr_fig = gr.skip()
        valid = ""
        if key is not None:
            history = logs.train_log(history_path)
            if history["valid"]:
                valid = "validation loss: " + ", ".join(f"step {r['step']}: **{r['loss']:.4f}**"
                                                        for r in history["valid"])
            if key != seen:
                loss_fig, lr_fig = logs.curves(history)
                if loss_fig is None:
                    loss_fig = lr_fig = gr.skip()
        done = logs.summary(run) if not state.running else None
        result, chat = "", ""
        if done:
            result = ("**held-out accuracy, before → after**\n\n" +
                      logs.accuracy_table(done.get("accuracy_before"), done.get("accuracy_after")))
            chat = done.get("chat_command", "")
        return (status, bar, loss_fig, lr_fig, valid, result, chat, logs.tail(state.log, 40), key)


def _image_length(model: str, root: Root) -> int:
    """Tokens per image of the chosen model (preset or checkpoint folder), for the inspector."""
    import json
    from models.config import PRESETS, get_preset
    if model in PRESETS:
        return get_preset(model).image_length
    try:
        cfg = json.loads((root.resolve(model) / "model_config.json").read_text())
        return int(cfg.get("image_length") or get_preset("cogvlm-tiny").image_length)
    except (OSError, ValueError, OutsideRoot):
        return get_preset("cogvlm-tiny").image_length


def _status_line(state, run: Optional[Path]) -> str:
    took = (state.ended or time.time()) - state.started
    where = f" · checkpoints `{run}`" if run else ""
    line = f"**{state.status}** (pid {state.pid}, {took:.0f} s){where}"
    if state.status == "failed":
        line += f" — exit status {state.returncode}: see the log below"
    if state.status in ("stopped", "failed", "ended"):
        saved = logs.latest_saved(run)
        if saved:
            line += (f"\n\nresumable from iteration {saved}: add `--resume {run}` to the same command")
        else:
            line += "\n\nno checkpoint was saved before it ended (set --save-interval to save along the way)"
    return line
