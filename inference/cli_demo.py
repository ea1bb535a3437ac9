"""Chat with a CogVLM checkpoint in the terminal (the official cli_demo, with staged search).

    python -m inference.cli_demo --from_pretrained PATH_OR_PRESET [--tokenizer PATH] [--template chat_old]
                                 [--stage-search N] [--judge self|logprob|api]

Enter an image path (empty: no image), then questions. `clear` starts over with a new image, `stop`
quits (end of input too). With `--stage-search N` every answer comes from LLaVA-CoT staged search with
N candidates per stage, and each stage is shown as it is chosen.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from .model_args import add_model_args, add_search_args, judge_from_args, load_model, search_options_from_args  # noqa: F401
from .options import OFFICIAL_DEMO_SAMPLING, SamplingOptions

WELCOME = ('Welcome to the cogcot CLI. Enter an image path to load an image, then ask questions. '
           'Type "clear" to start over, or "stop" to end the program.')


# ----------------------------------------------------------------------------- the demo

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference.cli_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("sampling (plain chat; default: greedy)")
    g.add_argument("--temperature", type=float, default=None,
                   help="0: greedy (default); > 0 samples (with --top_p / --top_k if given)")
    g.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None, help="nucleus filter (default 1: off)")
    g.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=None,
                   help="keep the k most likely tokens (default 0: off; 1 is greedy)")
    g.add_argument("--official-demo-sampling", action="store_true",
                   help="the official CogVLM cli_demo's values: temperature 0.8, top_p 0.4, top_k 1 (greedy, as "
                        "top_k 1 keeps one token); the flags above override them")
    g.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=None)
    add_search_args(p)
    return p


def sampling_from_args(args) -> SamplingOptions:
    """Greedy unless asked otherwise; --official-demo-sampling starts from the official demo's values."""
    base = OFFICIAL_DEMO_SAMPLING if args.official_demo_sampling else SamplingOptions()
    given = {k: getattr(args, k) for k in ("temperature", "top_p", "top_k") if getattr(args, k) is not None}
    return base.replace(**given, max_new_tokens=args.max_new_tokens, seed=args.seed)


def describe_sampling(o: SamplingOptions) -> str:
    values = f"temperature {o.temperature:g}, top_p {o.top_p:g}, top_k {o.top_k}"
    return f"greedy ({values})" if o.greedy else f"sampling ({values}, seed {o.seed})"


def _tolerate_bad_bytes() -> None:
    """Read stdin with errors='surrogateescape': bytes that are not UTF-8 arrive as lone surrogates we can
    report (and an image path in another encoding still opens), instead of a UnicodeDecodeError crash."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # e.g. a stream that cannot change its error handler
            pass


def _not_utf8(text: str) -> Optional[str]:
    """None for clean text, else which bytes are not UTF-8 (the surrogates `surrogateescape` made of them)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end].encode("utf-8", "surrogateescape")
        return f"byte(s) {bad.hex(' ')} at character {e.start + 1}"


def _printable(text: str) -> str:
    """`text` with the bytes that were not UTF-8 shown as U+FFFD (printing a lone surrogate would fail)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read(prompt: str) -> Optional[str]:
    try:
        return input(prompt).strip()
    except EOFError:
        print()
        return None
    except UnicodeDecodeError as e:  # a stdin we could not reconfigure
        print(f"\nerror: the input is not UTF-8 text ({e.reason}); please type it again")
        return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from models.checkpoint import CheckpointError
    from .chat import Chat
    from .search import StagedSearch
    try:
        model, tokenizer, template = load_model(args)
        judge = judge_from_args(args) if args.stage_search else None
    except (OSError, ValueError, RuntimeError, CheckpointError) as e:
        print(f"error: cannot load {args.from_pretrained}: {e}", file=sys.stderr)
        return 1
    if args.from_pretrained == "cogvlm-tiny":
        print("[note] cogvlm-tiny is a random-weight preset: expect garbage answers.")
    print(f"[template] {template}")
    options = sampling_from_args(args)
    print(f"[sampling] {describe_sampling(options)}")
    chat = Chat(model, tokenizer, template=template, options=options)
    search = None
    if args.stage_search:
        search = StagedSearch(model, tokenizer, judge=judge, template=template, log=args.judge_log,
                              options=search_options_from_args(args, n=args.stage_search))
        print(f"[staged search] {args.search_mode}, {args.stage_search} candidates per step, judge {search.judge.name}"
              + (", reference procedure" if args.reference else ""))
    print(WELCOME)
    _tolerate_bad_bytes()
    try:
        return _loop(chat, search)
    finally:
        if search is not None:
            search.close()


def _loop(chat, search) -> int:
    from .chat import ContextTooLong
    from .image import ImageLoadError
    from .judges import JudgeError
    with torch.no_grad():
        while True:
            path = _read("Please enter the image path: ")
            if path is None or path == "stop":
                return 0
            if path == "clear":
                continue
            try:
                chat.clear(path or None)  # a path in another encoding still opens (its bytes are kept)
            except ImageLoadError as e:
                print(f"error: {_printable(str(e))}")
                continue
            if not path:
                print("(no image: text-only chat)")
            while True:
                query = _read("User: ")
                if query is None or query == "stop":
                    return 0
                if query == "clear":
                    break
                if not query:
                    continue
                bad = _not_utf8(query)
                if bad is not None:
                    print(f"error: the question is not UTF-8 text ({bad}); check the terminal's encoding "
                          f"and type it again")
                    continue
                try:
                    if search is not None:
                        print("Model (staged search):")
                        result = search(chat.image, query, chat.history,
                                        on_step=lambda st: print(f"  [{st.name}] {st.text.strip()}", flush=True))
                        print("Model: " + result.text)
                        chat.history.append((query, result.text))
                    else:
                        print("Model: ", end="", flush=True)
                        for piece in chat.stream(query):
                            print(piece, end="", flush=True)
                        print()
                except (ContextTooLong, JudgeError) as e:
                    print(f"\nerror: {e}")


if __name__ == "__main__":
    sys.exit(main())
