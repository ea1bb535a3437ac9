"""`python -m webui` (console script `cogcot-board`): start the board on 127.0.0.1 (another host needs --auth)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

INSTALL = 'pip install -e ".[web]"'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui", description="The cogcot web board: configure, run and watch "
                                "fine-tuning, evaluate checkpoints, chat with them (staged search shown live).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but 127.0.0.1/localhost "
                   "requires --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    p.add_argument("--root", default=os.getcwd(), metavar="DIR",
                   help="the only folder the board reads and writes (default: the working directory)")
    return p


def check(args) -> Optional[str]:
    """The problem with the options, or None."""
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.auth:
        return f"--host {args.host} exposes the board (it starts processes and reads files): give --auth USER:PASSWORD"
    user, _, password = (args.auth or "").partition(":")
    if args.auth is not None and not (user and password):
        return "--auth must be USER:PASSWORD, both non-empty"
    if not os.path.isdir(args.root):
        return f"--root {args.root}: no such directory"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check(args)
    if problem:
        print(f"webui: {problem}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"webui: the board needs Gradio; install it with:  {INSTALL}", file=sys.stderr)
        return 1
    from .app import CSS, build
    from .paths import Root
    root = Root(args.root)
    demo = build(root)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"[webui] root {root.path}", flush=True)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=auth,
                                                   allowed_paths=[str(root.path)], css=CSS, show_error=True,
                                                   inbrowser=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
