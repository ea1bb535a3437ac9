"""Serve a cogcot checkpoint on the OpenAI chat-completions protocol (FastAPI + uvicorn).

    python -m inference.server --from_pretrained CKPT_OR_PRESET [--host 127.0.0.1] [--port 8000]
           [--image-root DIR] [--max-batch 8] [--device cpu|cuda] [--bf16]

Routes: GET /v1/models, POST /v1/chat/completions (text or image parts, temperature, top_p, max_tokens,
n, seed, stop, stream; the `stage_search` extension {"n": 4, "mode": "stage", "judge": "logprob"} answers
with LLaVA-CoT staged search), GET /v1/stats (batches and their sizes). One thread owns the model and
decodes concurrent requests as one batch that new ones join between steps (`inference.server_worker`).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from typing import Optional, Sequence

from .model_args import add_model_args, load_model

log = logging.getLogger("inference.server")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: the model flags of the other inference commands plus the server's."""
    p = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--image-root", default=None,
                   help="image_url parts may name files under this folder (else only data: URLs are read)")
    g.add_argument("--max-batch", type=int, default=8, help="rows decoded together at most (also the largest n)")
    g.add_argument("--max-tokens", type=int, default=512, help="max_tokens of a request that sends none")
    g.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: the checkpoint folder's name or the preset)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core); on a busy machine 1 keeps OpenMP "
                        "threads from spinning against each other")
    g.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def served_name(from_pretrained: str) -> str:
    """The model id clients send by default: the checkpoint folder's name, or the preset's."""
    return os.path.basename(os.path.normpath(from_pretrained)) or from_pretrained


def build_app(model, tokenizer, template: str, *, model_id: str, max_batch: int = 8, image_root: Optional[str] = None,
              default_max_tokens: int = 512):
    """(FastAPI app, started `ModelWorker`) serving an already-loaded model."""
    from .server_app import ServingConfig, create_app
    from .server_worker import ModelWorker
    if image_root is not None and not os.path.isdir(image_root):
        raise ValueError(f"--image-root {image_root} is not a folder")
    worker = ModelWorker(model, tokenizer, template=template, max_batch=max_batch).start()
    config = ServingConfig(model_id=model_id, tokenizer=tokenizer, image_length=model.args.image_length,
                           template=template, max_length=getattr(model.args, "max_sequence_length", 2048),
                           max_batch=max_batch, default_max_tokens=default_max_tokens,
                           image_root=None if image_root is None else os.path.abspath(image_root))
    return create_app(worker, config), worker


class BackgroundServer:
    """uvicorn serving `app` on a thread, on an already-bound socket (tests, benchmarks): `.url`, `.close()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load the model, start the model thread, serve until interrupted; 2 on bad options or checkpoint."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_batch < 1:
        print(f"--max-batch must be >= 1, got {args.max_batch}", file=sys.stderr)
        return 2
    if args.image_root is not None and not os.path.isdir(args.image_root):
        print(f"--image-root {args.image_root} is not a folder", file=sys.stderr)
        return 2
    import torch
    import uvicorn
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        model, tokenizer, template = load_model(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"cannot load {args.from_pretrained}: {e}", file=sys.stderr)
        return 2
    model_id = args.served_model_name or served_name(args.from_pretrained)
    app, worker = build_app(model, tokenizer, template, model_id=model_id, max_batch=args.max_batch,
                            image_root=args.image_root, default_max_tokens=args.max_tokens)
    log.info("serving %s as %r on http://%s:%d/v1 (max batch %d)", args.from_pretrained, model_id, args.host,
             args.port, args.max_batch)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
