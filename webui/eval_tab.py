"""The Evaluate tab: runs `python -m inference.evaluate` on a checkpoint and a TSV, then shows the accuracy per
category and the per-question records (question, image, response, correct), filterable to the wrong ones."""
from __future__ import annotations

import base64
import html
import io
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import gradio as gr

from . import logs
from .paths import OutsideRoot, Root
from .runner import Runner

MODES = ("greedy", "best_of_n", "sentence", "stage")  # inference.evaluate's --mode choices
JUDGES = ("logprob", "self")  # `api` needs an endpoint: use the command line for it
SHOWN_RECORDS = 300


def model_choices(root: Root) -> List[str]:
    """Presets, then the checkpoint folders found under the root (newest first)."""
    from models.config import PRESETS
    return list(root.checkpoints()) + list(PRESETS)


def checked_model(root: Root, value: str) -> str:
    """A preset name as is; a checkpoint folder must exist under the root."""
    from models.config import PRESETS
    value = (value or "").strip()
    if not value:
        raise OutsideRoot("choose a checkpoint or a preset")
    if value in PRESETS:
        return value
    return str(root.existing(value, "checkpoint", kind="dir"))


def _thumbnail(row: dict, image_root: str) -> str:
    """An <img> of the row's image (a data URL), or '' when it cannot be read."""
    try:
        from inference.eval_data import row_image
        image = row_image(row, image_root).convert("RGB")
        image.thumbnail((96, 96))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" width="64">'
    except Exception as err:  # noqa: BLE001 - an unreadable picture is named, and the record still shows
        return f"<small>(image: {html.escape(str(err))[:120]})</small>"


def records_html(records: List[dict], rows: Dict[str, dict], image_root: str, wrong_only: bool) -> str:
    shown = [r for r in records if not (wrong_only and r.get("correct"))]
    out = [f"<p>{len(shown)} of {len(records)} questions shown"
           + (f" (the first {SHOWN_RECORDS})" if len(shown) > SHOWN_RECORDS else "") + "</p>",
           '<table class="cogcot-records"><tr><th>#</th><th>image</th><th>category</th><th>question</th>'
           '<th>response</th><th>prediction / answer</th><th>correct</th></tr>']
    for r in shown[:SHOWN_RECORDS]:
        row = rows.get(str(r.get("index")))
        thumb = _thumbnail(row, image_root) if row else ""
        response = r.get("response") if r.get("error") is None else f"error: {r['error']}"
        verdict = "right" if r.get("correct") else "wrong"
        out.append(f'<tr class="{verdict}"><td>{html.escape(str(r.get("index")))}</td>'
                   f"<td>{thumb}</td><td>{html.escape(str(r.get('category')))}</td>"
                   f"<td>{html.escape(str(r.get('question') or ''))}</td>"
                   f"<td><small>{html.escape(str(response or ''))}</small></td>"
                   f"<td>{html.escape(str(r.get('prediction')))} / {html.escape(str(r.get('answer')))}</td>"
                   f"<td>{'✔' if r.get('correct') else '✘'}</td></tr>")
    return "\n".join(out + ["</table>"])


def accuracy_markdown(records: List[dict]) -> str:
    from inference.evaluate import summarize
    s = summarize(records)
    lines = ["| category | n | accuracy |", "|---|---:|---:|"]
    for c, acc in s["per_category"].items():
        lines.append(f"| {c} | {s['counts'][c]} | {100 * acc:.1f}% |")
    lines.append(f"| **overall** | {s['n']} | **{100 * s['accuracy']:.1f}%** |")
    if s["errors"]:
        lines.append(f"\n{s['errors']} row(s) could not be evaluated (counted as wrong)")
    return "\n".join(lines)


class EvalTab:
    def __init__(self, root: Root):
        self.root = root
        self.runner = Runner(root, "eval")
        self._rows_cache: Dict[str, Dict[str, dict]] = {}

    def build(self) -> None:
        with gr.Row():
            with gr.Column(scale=2):
                self.model = gr.Dropdown(choices=model_choices(self.root), value="cogvlm-tiny", allow_custom_value=True,
                                         label="checkpoint or preset", elem_id="eval-model")
                self.tsv = gr.Textbox(label="TSV (VLMEvalKit layout, under the root)", elem_id="eval-tsv")
                with gr.Row():
                    self.mode = gr.Dropdown(choices=list(MODES), value="greedy", label="mode", elem_id="eval-mode")
                    self.n = gr.Number(value=4, precision=0, minimum=1, label="N (candidates, search modes)")
                    self.judge = gr.Dropdown(choices=list(JUDGES), value="logprob", label="judge")
                with gr.Row():
                    self.limit = gr.Textbox(label="first K rows only", placeholder="all", elem_id="eval-limit")
                    self.max_new = gr.Number(value=512, precision=0, minimum=1, label="max new tokens",
                                             elem_id="eval-max-new")
                with gr.Row():
                    run_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="eval-stop")
                self.message = gr.Markdown(elem_id="eval-message")
                self.status = gr.Markdown(elem_id="eval-status")
                self.progress = gr.HTML(elem_id="eval-progress")
                self.table = gr.Markdown(elem_id="eval-table")
            with gr.Column(scale=3):
                self.wrong_only = gr.Checkbox(label="only the wrong answers", elem_id="eval-wrong-only")
                self.records = gr.HTML(elem_id="eval-records")
                self.log = gr.Textbox(label="log (tail)", lines=8, max_lines=8, interactive=False, elem_id="eval-log")
        seen = gr.State(None)
        run_btn.click(self.start, [self.model, self.tsv, self.mode, self.n, self.judge, self.limit, self.max_new],
                      [self.message])
        stop_btn.click(self.stop, None, [self.message])
        live = [self.status, self.progress, self.table, self.records, self.log, seen]
        gr.Timer(1.0).tick(self.refresh, [self.wrong_only, seen], live)
        self.wrong_only.change(self.refresh, [self.wrong_only, gr.State(None)], live)
        self.load_event = (self.refresh, [self.wrong_only, seen], live)

    def start(self, model, tsv, mode, n, judge, limit, max_new):
        try:
            model = checked_model(self.root, model)
            data = self.root.existing(tsv or "", "TSV")
        except OutsideRoot as e:
            return f"**cannot evaluate:** {e}"
        limit = (limit or "").strip()
        if limit and not limit.isdigit():
            return f"**cannot evaluate:** first K rows: {limit!r} is not a whole number"
        out = self.runner.dir / f"records-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        cmd = [sys.executable, "-m", "inference.evaluate", "--from_pretrained", model, "--data", str(data),
               "--mode", mode, "--n", str(int(n or 4)), "--judge", judge, "--max-new-tokens", str(int(max_new or 512)),
               "--out", str(out), "--restart"] + (["--limit", limit] if limit else [])
        try:
            self.runner.start(cmd, extra={"out": str(out), "data": str(data)})
        except (RuntimeError, OSError) as e:
            return f"**cannot evaluate:** {e}"
        return "evaluating: `" + " ".join(cmd[1:]).replace(str(self.root.path) + "/", "") + "`"

    def stop(self):
        state = self.runner.stop()
        return "stopping" if state is not None and state.running else "no evaluation running"

    def _rows(self, data: str) -> Dict[str, dict]:
        if data not in self._rows_cache:
            try:
                from inference.eval_data import index_of, read_tsv
                self._rows_cache[data] = {str(index_of(r.get("index", i))): r for i, r in enumerate(read_tsv(data))}
            except Exception as err:  # noqa: BLE001 - without the TSV's rows the records show, without images
                print(f"[webui] {data}: no images for the records ({err})", file=sys.stderr)
                self._rows_cache[data] = {}
        return self._rows_cache[data]

    def refresh(self, wrong_only, seen):
        state = self.runner.current()
        if state is None:
            return "no evaluation yet", "", "", "", "", seen
        text = logs.read_text(state.log)
        took = (state.ended or time.time()) - state.started
        status = f"**{state.status}** ({took:.0f} s)"
        if state.status == "failed":
            errors = [l for l in text.splitlines() if l.startswith("error")]
            status += f" — {errors[-1] if errors else f'exit status {state.returncode}: see the log'}"
        done = logs.tqdm_progress(text)
        bar = logs.progress_html(done[0], done[1], f"{done[0]}/{done[1]} questions") if done else ""
        out = Path(state.extra.get("out", ""))
        key = None
        if out.is_file():
            st = out.stat()
            key = f"{out}:{st.st_size}:{st.st_mtime_ns}:{wrong_only}:{state.running}"
        if key is None or key == seen:
            return status, bar, gr.skip(), gr.skip(), logs.tail(state.log, 20), seen
        records = logs.records(out)
        table = accuracy_markdown(records) if records else ""
        data = state.extra.get("data", "")
        view = records_html(records, self._rows(data), str(Path(data).parent), bool(wrong_only)) if records else ""
        return status, bar, table, view, logs.tail(state.log, 20), key
