"""The command-line arguments that load a model and configure staged search, and the objects built
from them; shared by the CLI demo, `inference.evaluate` and the benchmarks (so none imports another's CLI)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from .options import REFERENCE_SAMPLING, SEARCH_MODES, SearchOptions
from .prompt import TEMPLATES


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--from_pretrained", "--from-pretrained", dest="from_pretrained", default="cogvlm-tiny",
                   help="checkpoint directory (official SAT layout) or preset name (cogvlm-tiny = random weights)")
    g.add_argument("--tokenizer", "--local_tokenizer", dest="tokenizer", default=None,
                   help="sentencepiece tokenizer.model (default: the checkpoint's, or the tiny one)")
    g.add_argument("--template", default=None, choices=sorted(TEMPLATES),
                   help="prompt template (default: the checkpoint's text_processor_version, else chat_old)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--model-seed", type=int, default=0, help="torch seed before building (random presets)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint file that only loads by running pickled code (an old one; only for "
                        "files from a source you trust)")


def add_search_args(p: argparse.ArgumentParser, n_flag: str = "--stage-search", judge: str = "self") -> None:
    g = p.add_argument_group("staged search")
    if n_flag == "--n":
        g.add_argument("--n", type=int, default=4, help="candidates per step (search modes)")
    else:
        g.add_argument("--stage-search", type=int, default=0, metavar="N",
                       help="answer with staged search, N candidates per stage (0: plain chat)")
        g.add_argument("--search-mode", default="stage", choices=SEARCH_MODES)
    g.add_argument("--judge", default=judge, choices=("self", "logprob", "consistency", "api"))
    g.add_argument("--reference", action="store_true",
                   help="run the search like the reference code (sequential, full re-encode): for comparison")
    g.add_argument("--max-stage-tokens", type=int, default=256, help="cap on one candidate of one step")
    g.add_argument("--greedy-candidate", action="store_true",
                   help="candidate 0 of every step is the greedy continuation (the others are sampled)")
    g.add_argument("--judge-max-tokens", type=int, default=128, help="cap on a self-judge verdict")
    g.add_argument("--judge-log", default=None, help="append every judgment to this JSONL file")
    g.add_argument("--api-base", default=None, help="OpenAI-compatible base URL for --judge api (…/v1)")
    g.add_argument("--api-model", default=None, help="model name for --judge api")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--api-timeout", type=float, default=60.0)
    g.add_argument("--api-retries", type=int, default=3)


def load_model(args):
    """(model, tokenizer, template) from the model arguments; raises with a message on a bad checkpoint."""
    from models.cogvlm import CogVLMModel
    from models.tokenizer import tokenizer_for
    torch.manual_seed(args.model_seed)
    run_args = argparse.Namespace(device=args.device, bf16=args.bf16, fp16=args.fp16, mode="inference")
    model, model_args = CogVLMModel.from_pretrained(args.from_pretrained, args=run_args,
                                                    trust_checkpoint=getattr(args, "trust_checkpoint", False))
    model.eval()
    tokenizer = tokenizer_for(args.from_pretrained, getattr(model_args, "tokenizer_type", None), args.tokenizer)
    template = args.template or getattr(model_args, "text_processor_version", None) or "chat_old"
    if template not in TEMPLATES:
        template = "chat_old"
    return model, tokenizer, template


def judge_from_args(args):
    from .judges import make_judge
    if args.judge != "api":
        return args.judge
    return make_judge("api", base_url=args.api_base, model=args.api_model, api_key_env=args.api_key_env,
                      timeout=args.api_timeout, retries=args.api_retries)


def search_options_from_args(args, n: Optional[int] = None, mode: Optional[str] = None) -> SearchOptions:
    return SearchOptions(mode=mode or getattr(args, "search_mode", "stage"), n=n or getattr(args, "n", 4),
                         max_step_tokens=args.max_stage_tokens, reference=args.reference,
                         greedy_candidate=getattr(args, "greedy_candidate", False),
                         judge_sampling=REFERENCE_SAMPLING.replace(max_new_tokens=args.judge_max_tokens),
                         seed=getattr(args, "seed", None) or 0)
