"""The Chat tab: a checkpoint or preset, an uploaded image, multi-turn chat with streamed replies
(`inference.chat.Chat`), sampling options, and staged search (`inference.search.StagedSearch`) shown stage
by stage: the N candidates, the tournament's matches with verdict and reason, and the winner."""
from __future__ import annotations

import argparse
import html
import queue
import threading
import time
from typing import Dict, List, Optional, Tuple

import gradio as gr

from .eval_tab import checked_model, model_choices
from .paths import OutsideRoot, Root

SEARCH_MODES = ("stage", "best_of_n", "sentence")
JUDGES = ("logprob", "self")
_DONE = object()


def step_html(step: dict) -> str:
    """One search step as known so far: its candidates (the winner marked once decided), then each match
    of the tournament with its verdict and reason. step: {"stage", "candidates", "matches", "winner"}."""
    winner = step.get("winner")
    state = "decided" if winner is not None else "judging..."
    parts = [f'<div class="cogcot-step"><h4>{html.escape(step["stage"])}</h4>',
             f'<p><small>{state}</small></p><ol start="0">']
    for k, text in enumerate(step["candidates"]):
        mark = " <b>← winner</b>" if k == winner else ""
        parts.append(f'<li class="{"winner" if k == winner else "candidate"}"><code>'
                     f"{html.escape(text.strip()) or '(empty)'}</code>{mark}</li>")
    parts.append("</ol>")
    if step["matches"]:
        parts.append("<table><tr><th>match</th><th>pair</th><th>winner</th><th>reason</th></tr>")
        for j in step["matches"]:
            reason = (j.get("reason") or "") + (" (fallback)" if j.get("fallback") else "")
            parts.append(f"<tr><td>{j['match']}</td><td>{j['pair'][0]} vs {j['pair'][1]}</td><td>{j['winner']}</td>"
                         f"<td><small>{html.escape(reason)}</small></td></tr>")
        parts.append("</table>")
    return "".join(parts) + "</div>"


def search_html(steps: List[dict]) -> str:
    decided = sum(s.get("winner") is not None for s in steps)
    return f"<p>{decided} step(s) decided</p>" + "".join(step_html(s) for s in steps)


class ChatTab:
    def __init__(self, root: Root):
        self.root = root
        self._models: Dict[str, tuple] = {}  # checkpoint -> (model, tokenizer, template), loaded once
        self._chats: Dict[Tuple[str, str], object] = {}  # (session, checkpoint) -> Chat
        self._lock = threading.Lock()

    def build(self) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                self.model = gr.Dropdown(choices=model_choices(self.root), value="cogvlm-tiny", allow_custom_value=True,
                                         label="checkpoint or preset", elem_id="chat-model")
                self.image = gr.Image(type="filepath", label="image", elem_id="chat-image", height=220)
                with gr.Accordion("sampling", open=False):
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top_p")
                    top_k = gr.Number(value=0, precision=0, minimum=0, label="top_k (0: off)")
                    max_new = gr.Number(value=256, precision=0, minimum=1, label="max new tokens",
                                        elem_id="chat-max-new")
                    seed = gr.Number(value=0, precision=0, label="seed")
                with gr.Accordion("staged search", open=True):
                    search_on = gr.Checkbox(label="answer with staged search", elem_id="chat-search-on")
                    n = gr.Number(value=4, precision=0, minimum=1, label="N candidates per step", elem_id="chat-n")
                    mode = gr.Dropdown(choices=list(SEARCH_MODES), value="stage", label="mode")
                    judge = gr.Dropdown(choices=list(JUDGES), value="logprob", label="judge")
                    step_tokens = gr.Number(value=64, precision=0, minimum=1, label="max tokens per step",
                                            elem_id="chat-step-tokens")
            with gr.Column(scale=2):
                self.bot = gr.Chatbot(label="chat", elem_id="chat-bot", height=380)
                with gr.Row():
                    self.text = gr.Textbox(show_label=False, placeholder="ask about the image", scale=4,
                                           elem_id="chat-text")
                    send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
                    clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
                self.message = gr.Markdown(elem_id="chat-message")
                self.search_view = gr.HTML(elem_id="chat-search")
        inputs = [self.text, self.bot, self.model, self.image, temperature, top_p, top_k, max_new, seed,
                  search_on, n, mode, judge, step_tokens]
        outputs = [self.bot, self.search_view, self.message, self.text]
        send.click(self.respond, inputs, outputs)
        self.text.submit(self.respond, inputs, outputs)
        clear.click(self.clear, [self.model], [self.bot, self.search_view, self.message])

    # -- model and conversation ----------------------------------------------------------------
    def _load(self, checkpoint: str):
        with self._lock:
            if checkpoint not in self._models:
                from inference.model_args import load_model
                import torch
                args = argparse.Namespace(from_pretrained=checkpoint, tokenizer=None, template=None, device="cpu"
                                          if not torch.cuda.is_available() else "cuda", bf16=False, fp16=False,
                                          model_seed=0)
                self._models[checkpoint] = load_model(args)
            return self._models[checkpoint]

    def _chat(self, session: str, checkpoint: str):
        from inference.chat import Chat
        key = (session, checkpoint)
        if key not in self._chats:
            model, tokenizer, template = self._load(checkpoint)
            self._chats[key] = Chat(model, tokenizer, template=template)
        return self._chats[key]

    def clear(self, checkpoint, request: gr.Request = None):
        session = getattr(request, "session_hash", "") or ""
        for key in [k for k in self._chats if k[0] == session]:
            del self._chats[key]
        return [], "", ""

    def respond(self, text, history, checkpoint, image, temperature, top_p, top_k, max_new, seed, search_on, n, mode,
                judge, step_tokens, request: gr.Request = None):
        """Stream the answer into the chat (and, with staged search, each decided step into the search view)."""
        history = list(history or [])
        text = (text or "").strip()
        if not text:
            yield history, gr.skip(), "type a question first", gr.skip()
            return
        try:
            checkpoint = checked_model(self.root, checkpoint)
            from inference.options import SamplingOptions, SearchOptions
            sampling = SamplingOptions(temperature=float(temperature or 0), top_p=float(top_p or 1),
                                       top_k=int(top_k or 0), max_new_tokens=int(max_new or 256),
                                       seed=int(seed) if seed is not None else None)
            yield history + [{"role": "user", "content": text}], gr.skip(), "loading the model...", ""
            chat = self._chat(getattr(request, "session_hash", "") or "", checkpoint)
        except (OutsideRoot, ValueError, OSError, RuntimeError) as e:
            yield history, gr.skip(), f"**error:** {e}", gr.skip()
            return
        history = history + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        pieces: "queue.Queue" = queue.Queue()
        if search_on:
            options = SearchOptions(mode=mode, n=int(n or 4), max_step_tokens=int(step_tokens or 64),
                                    max_new_tokens=max(int(max_new or 256), int(step_tokens or 64)),
                                    seed=int(seed or 0))
            worker = threading.Thread(target=self._search_worker, args=(chat, checkpoint, image, text, options, judge,
                                                                         pieces), daemon=True)
        else:
            worker = threading.Thread(target=self._chat_worker, args=(chat, image, text, sampling, pieces), daemon=True)
        t0 = time.time()
        worker.start()
        steps: List[dict] = []
        while True:
            kind, value = pieces.get()
            if kind == "piece":
                history[-1]["content"] += value
                yield history, gr.skip(), "", ""
            elif kind == "candidates":
                steps.append({"stage": value["stage"], "candidates": value["candidates"], "matches": [],
                              "winner": None})
                yield history, search_html(steps), "searching...", ""
            elif kind == "match":
                steps[-1]["matches"].append(value)
                yield history, search_html(steps), "searching...", ""
            elif kind == "step":
                if not steps or steps[-1]["winner"] is not None:  # a one-candidate step has no event before it
                    steps.append({"stage": value.name, "candidates": [c.text for c in value.candidates], "matches": []})
                steps[-1]["winner"] = value.winner
                history[-1]["content"] += value.text  # the answer grows by each chosen step
                yield history, search_html(steps), "searching...", ""
            elif kind == "answer":
                history[-1]["content"] = value
                yield history, gr.skip(), "searching...", ""
            elif kind == "error":
                yield history, gr.skip(), f"**error:** {value}", ""
                return
            elif kind == "end":
                yield history, gr.skip(), f"answered in {time.time() - t0:.1f} s", ""
                return

    def _chat_worker(self, chat, image, text, sampling, out: "queue.Queue") -> None:
        import torch
        try:
            if image is None and chat.image is not None:
                chat.clear()
            with torch.no_grad():
                for piece in chat.stream(text, image=image, options=sampling):
                    out.put(("piece", piece))
        except Exception as e:  # noqa: BLE001 - shown on the page; the board goes on
            out.put(("error", f"{type(e).__name__}: {e}"))
            return
        out.put(("end", None))

    def _search_worker(self, chat, checkpoint, image, text, options, judge, out: "queue.Queue") -> None:
        import torch
        from inference.search import StagedSearch
        try:
            model, tokenizer, template = self._load(checkpoint)
            if image is not None and not chat._same_image(image):
                chat.clear(image)
            search = StagedSearch(model, tokenizer, judge=judge, options=options, template=template)
            with torch.no_grad():
                result = search(chat.image, text, chat.history, on_step=lambda st: out.put(("step", st)),
                                on_event=lambda kind, data: out.put((kind, data)))
            chat.history.append((text, result.text))
            out.put(("answer", result.text))
        except Exception as e:  # noqa: BLE001
            out.put(("error", f"{type(e).__name__}: {e}"))
            return
        out.put(("end", None))
