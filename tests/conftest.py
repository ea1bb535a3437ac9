"""Shared fixtures: tiny tokenizers and random-weight models built locally (no network, no downloads)."""
import os

import pytest
import torch

# Keep the tiny tokenizer cache inside the test session, never in the user's home.
os.environ.setdefault("COGCOT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "cogcot"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 1024-piece byte-fallback BPE sentencepiece tokenizer with LLaMA ids (unk 0, bos 1, eos 2)."""
    from models.tokenizer import build_tiny_tokenizer
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture
def tiny_config():
    """The cogvlm-tiny preset (56 px images, 64 image tokens, 2 language layers of width 128)."""
    from models.config import get_preset
    return get_preset("cogvlm-tiny")


@pytest.fixture
def tiny_model(tiny_config):
    """A random-weight cogvlm-tiny (torch seed 1234) in eval mode, fp32 on CPU."""
    from models.cogvlm import CogVLMModel
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = CogVLMModel(CogVLMModel.get_args(**tiny_config.to_dict()))
    return model.eval()


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (many tiny ops: on a busy 2-core machine two OpenMP threads
    spin against each other and a tiny forward is ~40x slower); restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm():
    """(model, tokenizer) for the inference tests: a seeded random cogvlm-tiny in float64 (so batched and
    one-row decoding agree to ~1e-15 and sampled tokens match exactly), eval mode, with its tokenizer.
    Shared by the session: tests must not change it."""
    from models.cogvlm import CogVLMModel
    from models.tokenizer import tokenizer_for
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model, args = CogVLMModel.from_pretrained("cogvlm-tiny")
    return model.double().eval(), tokenizer_for("cogvlm-tiny", args.tokenizer_type)


@pytest.fixture
def image_batch(tiny_config):
    """Builds model inputs for `[BOS][BOI][IMG]xL[EOI] text` prompts, the official v1.1 layout."""
    from tests.helpers import image_prompt_inputs
    return lambda text_ids, seed=0: image_prompt_inputs(tiny_config, text_ids, seed=seed)


@pytest.fixture
def write_records(tmp_path):
    """Writes tiny PNGs and a data file of conversation records under tmp_path; returns the file's path.

    `write_records(records, images=("a.png",), name="data.jsonl", as_array=False)`; a str record is
    written as a raw line (to test bad JSON).
    """
    import json

    from PIL import Image

    def write(records, images=(), name="data.jsonl", as_array=False, size=(20, 16)):
        for i, image in enumerate(images):
            path = tmp_path / image
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, ((60 * i) % 256, 100, 200)).save(path)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        text = ("[\n" + ",\n".join(lines) + "\n]\n") if as_array else "\n".join(lines) + "\n"
        (tmp_path / name).write_text(text)
        return tmp_path / name
    return write


@pytest.fixture
def lora_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    """A LoRA training checkpoint of the tiny model (adapters on every part, B randomised so they matter):
    returns (checkpoint dir, the model with its adapters attached)."""
    from finetune.checkpoint import write_model_files
    from finetune.lora import LoRAConfig, add_lora
    from models.checkpoint import save_checkpoint
    config = LoRAConfig(rank=2, alpha=4, targets=("all",))
    mixin = add_lora(tiny_model, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for a in mixin.adapters.values():
            a.B.copy_(torch.randn(a.B.shape, generator=g) * 0.05)
    ckpt = tmp_path / "lora-run"
    save_checkpoint(tiny_model, ckpt, {}, iteration=5)
    write_model_files(tiny_model, ckpt, tiny_tokenizer.model_file, lora_config=config)
    return ckpt, tiny_model


@pytest.fixture
def sat_dir(tmp_path, tiny_model, tiny_tokenizer):
    """The random tiny model saved in the SAT layout, with its tokenizer."""
    import shutil
    out = tiny_model.save_pretrained(tmp_path / "sat")
    shutil.copyfile(tiny_tokenizer.model_file, out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """`inference.server` on a real uvicorn at a free 127.0.0.1 port, serving a seeded random cogvlm-tiny
    in float64 (so batched and one-at-a-time answers agree exactly), with an --image-root holding red.png.
    Yields a namespace: url (…/v1), model_id, worker, model, tokenizer, template, image_root. Module-scoped:
    the model loads once; tests must not change it."""
    import argparse
    from types import SimpleNamespace

    from PIL import Image

    from inference.model_args import load_model
    from inference.server import BackgroundServer, build_app
    root = tmp_path_factory.mktemp("server_images")
    Image.new("RGB", (40, 30), (220, 30, 30)).save(root / "red.png")
    args = argparse.Namespace(from_pretrained="cogvlm-tiny", device="cpu", bf16=False, fp16=False, model_seed=1234,
                              tokenizer=None, template=None)
    with torch.random.fork_rng():
        model, tokenizer, template = load_model(args)
    model = model.double().eval()
    app, worker = build_app(model, tokenizer, template, model_id="cogvlm-tiny", max_batch=8, image_root=str(root))
    server = BackgroundServer(app)
    yield SimpleNamespace(url=server.url, model_id="cogvlm-tiny", worker=worker, model=model, tokenizer=tokenizer,
                          template=template, image_root=root)
    server.close()
    worker.stop()


# ----------------------------------------------------------------------------- the web board (tests/test_webui.py)

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """`python -m webui` on a free 127.0.0.1 port with a fresh --root; yields (url, root). Skips without Gradio."""
    import subprocess
    import sys
    import time
    import urllib.request
    from types import SimpleNamespace
    pytest.importorskip("gradio", reason="the board needs the [web] extra (pip install -e .[web])")
    root = tmp_path_factory.mktemp("board-root")
    port = _free_port()
    log = open(root.parent / f"board-{port}.log", "wb")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p),
               GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--port", str(port), "--root", str(root)], cwd=repo,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"the board did not start: {(root.parent / f'board-{port}.log').read_text()[-3000:]}")
            time.sleep(0.3)
    yield SimpleNamespace(url=url, root=root, proc=proc, log=root.parent / f"board-{port}.log")
    import json
    import signal
    for state in root.glob(".cogcot-board/*/current.json"):  # runs outlive the board by design: end them here
        run = json.loads(state.read_text())
        if run.get("ended") is None and run.get("pid"):
            try:
                os.killpg(run["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, or $COGCOT_BROWSER) driven by Playwright; skips with the reason when absent."""
    import shutil
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    exe = os.environ.get("COGCOT_BROWSER") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe or not os.path.exists(exe):
        pytest.skip("no Chromium found (apt-get install chromium, or set COGCOT_BROWSER)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, board):
    """A fresh browser page on the board, loaded."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    pg.goto(board.url)
    pg.wait_for_selector("#train-start")
    yield pg
    pg.close()
