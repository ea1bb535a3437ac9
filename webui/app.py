"""The board's page: one tab per job (train, evaluate, chat, data: the teacher pipeline)."""
from __future__ import annotations

import gradio as gr

from .paths import Root

CSS = ".cogcot-progress progress { height: 14px; }"


def build(root: Root) -> gr.Blocks:
    """The whole page; each tab object keeps its own runner, so a reopened page re-attaches to their runs."""
    from .chat_tab import ChatTab
    from .data_tab import DataTab
    from .eval_tab import EvalTab
    from .train_tab import TrainTab
    tabs = [("Train", TrainTab(root)), ("Evaluate", EvalTab(root)), ("Chat", ChatTab(root)), ("Data", DataTab(root))]
    with gr.Blocks(title="cogcot board") as demo:
        gr.Markdown(f"## cogcot board  \nroot: `{root.path}` — every path is read and written under it")
        for name, tab in tabs:
            with gr.Tab(name, id=name.lower(), elem_id=f"tab-{name.lower()}"):
                tab.build()
        for _, tab in tabs:
            event = getattr(tab, "load_event", None)
            if event is not None:
                demo.load(*event)
    return demo
