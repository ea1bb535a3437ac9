"""The Data tab: runs the teacher pipeline (`python -m dataset.teacher`) on a file against an
OpenAI-compatible endpoint, with its progress, the acceptance rate and the reasons samples were rejected."""
from __future__ import annotations

import html
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import gradio as gr

from . import logs
from .paths import OutsideRoot, Root
from .runner import Runner

POSTFIX = re.compile(r"\b(accepted|rejected|pending)=(\d+)")  # the progress bar's live counts (any order)
REASON = re.compile(r"^(?:attempt \d+: )?([^:]+)")
FINAL = re.compile(r"^accepted (\d+), rejected (\d+), pending (\d+) \(acceptance (\S+) of the finished\)", re.M)
BY_CHECK = re.compile(r"^rejections by check: (.*)$", re.M)


def reasons_html(path: Path, shown: int = 50) -> str:
    """The rejections file as a table (latest first) with a count per reason."""
    rows = []
    for line in logs.read_text(path).splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        return ""
    counts = Counter(REASON.match(str(r))[1] for row in rows for r in (row.get("reasons") or [])[-1:])
    out = ["<p>last reason per rejected sample: " + ", ".join(f"{html.escape(k)} {v}" for k, v in counts.most_common())
           + "</p>", '<table class="cogcot-rejects"><tr><th>id</th><th>where</th><th>reasons</th></tr>']
    for row in reversed(rows[-shown:]):
        reasons = "<br>".join(html.escape(str(r)) for r in row.get("reasons") or [])
        out.append(f"<tr><td>{html.escape(str(row.get('id')))}</td><td>{html.escape(str(row.get('where', '')))}</td>"
                   f"<td><small>{reasons}</small></td></tr>")
    return "\n".join(out + ["</table>"])


class DataTab:
    def __init__(self, root: Root):
        self.root = root
        self.runner = Runner(root, "teacher")

    def build(self) -> None:
        with gr.Row():
            with gr.Column(scale=2):
                data = gr.Textbox(label="input records (JSON/JSONL) or VLMEvalKit TSV, under the root",
                                  elem_id="teacher-data")
                out = gr.Textbox(value="teacher/records.jsonl",
                                 label="accepted records go to (appended; a rerun resumes)",
                                 elem_id="teacher-out")
                base = gr.Textbox(label="endpoint (OpenAI-compatible, …/v1)", elem_id="teacher-base")
                model = gr.Textbox(label="model name", elem_id="teacher-model")
                with gr.Row():
                    workers = gr.Number(value=8, precision=0, minimum=1, label="requests in flight")
                    limit = gr.Textbox(label="first N samples only", placeholder="all", elem_id="teacher-limit")
                    verify = gr.Dropdown(choices=["match", "llm"], value="match", label="verify")
                retry = gr.Checkbox(label="try the rejected ids again (--retry-rejected)")
                with gr.Row():
                    run_btn = gr.Button("Run the teacher", variant="primary", elem_id="teacher-run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="teacher-stop")
                self.message = gr.Markdown(elem_id="teacher-message")
                self.status = gr.Markdown(elem_id="teacher-status")
                self.progress = gr.HTML(elem_id="teacher-progress")
                self.counts = gr.Markdown(elem_id="teacher-counts")
            with gr.Column(scale=3):
                self.rejects = gr.HTML(elem_id="teacher-rejects")
                self.log = gr.Textbox(label="log (tail)", lines=10, max_lines=10, interactive=False,
                                      elem_id="teacher-log")
        run_btn.click(self.start, [data, out, base, model, workers, limit, verify, retry], [self.message])
        stop_btn.click(self.stop, None, [self.message])
        live = [self.status, self.progress, self.counts, self.rejects, self.log]
        gr.Timer(1.0).tick(self.refresh, None, live)
        self.load_event = (self.refresh, None, live)

    def start(self, data, out, base, model, workers, limit, verify, retry):
        try:
            data_path = self.root.existing(data or "", "input")
            out_path = self.root.resolve(out or "teacher/records.jsonl", "output")
        except OutsideRoot as e:
            return f"**cannot run the teacher:** {e}"
        if not (base or "").strip().startswith(("http://", "https://")):
            return "**cannot run the teacher:** the endpoint must be an http(s) URL ending in /v1"
        if not (model or "").strip():
            return "**cannot run the teacher:** name the model"
        limit = (limit or "").strip()
        if limit and not limit.isdigit():
            return f"**cannot run the teacher:** first N samples: {limit!r} is not a whole number"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        rejected = out_path.with_name(out_path.stem + ".rejected.jsonl")  # named, so the board reads that file
        cmd = [sys.executable, "-m", "dataset.teacher", "--data", str(data_path), "--out", str(out_path),
               "--rejected", str(rejected),
               "--api-base", base.strip(), "--api-model", model.strip(), "--workers", str(int(workers or 8)),
               "--verify", verify] + (["--limit", limit] if limit else []) + (["--retry-rejected"] if retry else [])
        try:
            self.runner.start(cmd, extra={"rejected": str(rejected)})
        except (RuntimeError, OSError) as e:
            return f"**cannot run the teacher:** {e}"
        return "running: `" + " ".join(cmd[1:]).replace(str(self.root.path) + "/", "") + "`"

    def stop(self):
        state = self.runner.stop()
        return "stopping (finished samples are kept; a rerun resumes)" if state is not None and state.running \
            else "no teacher run going"

    def refresh(self):
        state = self.runner.current()
        if state is None:
            return "no teacher run yet", "", "", "", ""
        text = logs.read_text(state.log)
        took = (state.ended or time.time()) - state.started
        status = f"**{state.status}** ({took:.0f} s)"
        if state.status == "failed":
            errors = [l for l in text.splitlines() if l.startswith(("error", "problem"))]
            status += " — " + ("; ".join(errors[-3:]) if errors else f"exit status {state.returncode}: see the log")
        done = logs.tqdm_progress(text)
        bar = logs.progress_html(done[0], done[1], f"{done[0]}/{done[1]} samples") if done else ""
        final, live = FINAL.search(text), dict(POSTFIX.findall(text[-2000:]))
        counts = ""
        if final:
            counts = (f"accepted **{final[1]}**, rejected **{final[2]}**, pending **{final[3]}** — "
                      f"acceptance rate **{final[4]}** of the finished")
            checks = BY_CHECK.search(text)
            if checks:
                counts += f"\n\nrejections by check: {checks[1]}"
        elif live:
            a, r, p = (int(live.get(k, 0)) for k in ("accepted", "rejected", "pending"))
            rate = f"{100 * a / (a + r):.1f}%" if a + r else "n/a"
            counts = f"accepted {a}, rejected {r}, pending {p} — acceptance so far {rate}"
        return status, bar, counts, reasons_html(Path(state.extra.get("rejected", ""))), logs.tail(state.log, 20)
