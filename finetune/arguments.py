"""Options of `bash finetune/run.sh` (finetune/launch.py) and finetune/finetune.py, one parser for both.

Every option `--some-name` can also be set by the environment variable `COGCOT_SOME_NAME`; the
command line wins. Lists are comma-separated in the environment. Options not listed here are
handed to SwissArmyTransformer unchanged (e.g. `--checkpoint-activations`, `--hidden-dropout 0`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ENV_PREFIX = "COGCOT_"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
NAMED_CONFIGS = {"zero2_bf16": "zero2_bf16.json", "zero3": "zero3.json", "cpu": "cpu.json"}

# The embedded default run: cogvlm-tiny on freshly generated synthetic data (measured, see README).
DEFAULTS = dict(
    # lr 5e-4: at 2e-3 the tiny model learnt colour only (shape and position stayed at chance for 1300 steps)
    # 2,400 steps of 16 fresh items each (38,400 items, each seen once): 8-9 minutes on 2 CPU cores at
    # 80-90 samples/s (a box at 60 samples/s would need about 11)
    model="cogvlm-tiny", train_iters=2400, batch_size=16, lr=5e-4, warmup=0.03, weight_decay=0.0,
    log_interval=20, synth_n=38400, synth_n_test=300, synth_seed=7,
    # colour and chart are learnt early, two-shape positions, counting and subtraction last: the items go
    # where the errors are; the held-out set stays even (README)
    synth_category_weights="color=0.2,shape=0.7,position=1.8,chart=0.8,count=1.4,arithmetic=1.4",
    # two-shape position items are the hardest, but 0.75 of them (was half) did not help them: 79.0% vs 81.0%
    synth_position_pairs=0.5,
    # the caption (what is seen) and the conclusion count double: +11 points at 300 steps; at 2,400 steps
    # no measurable effect (off: 82.0% and 77.0% on seed 11, against 81.0% and 79.7%; README)
    stage_loss_weights="SUMMARY=0.5,CAPTION=2,REASONING=1,CONCLUSION=2",
)


class ConfigError(ValueError):
    """A bad option, path or config, found before anything starts; lists every problem at once."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"  - {p}" for p in self.problems))


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


class _EnvParser(argparse.ArgumentParser):
    """`add(flag, ...)`: an option whose default comes from COGCOT_<FLAG> when that is set."""

    def add(self, group, flag: str, *, default=None, type=str, nargs=None, flag_only=False, help="", **kw):
        env = env_name(flag)
        raw = os.environ.get(env)
        if flag_only:
            value = _truthy(raw) if raw is not None else bool(default)
            group.add_argument(flag, action="store_true", default=value, help=f"{help} [env {env}]")
            return
        if raw is not None and raw.strip() != "":
            if nargs in ("+", "*"):
                value = [type(v) for v in raw.replace(",", " ").split()]
            else:
                try:
                    value = type(raw)
                except ValueError:
                    raise ConfigError([f"{env}={raw!r}: not a valid {type.__name__}"]) from None
        else:
            value = default
        shown = f" (default: {default})" if default not in (None, "", []) else ""
        group.add_argument(flag, default=value, type=type, nargs=nargs, help=f"{help}{shown} [env {env}]", **kw)


def build_parser(launcher: bool = True) -> argparse.ArgumentParser:
    p = _EnvParser(
        prog="bash finetune/run.sh" if launcher else "finetune/finetune.py",
        description="Fine-tune a CogVLM model (SAT + DeepSpeed) on conversation data. With no arguments: "
                    "cogvlm-tiny on freshly generated synthetic VQA, evaluated before and after.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every option --some-name may also be given as the environment variable COGCOT_SOME_NAME "
               "(lists comma-separated); the command line wins.\nOptions not listed are passed to "
               "SwissArmyTransformer unchanged, e.g. --checkpoint-activations, --hidden-dropout 0, "
               "--lr-decay-ratio 0.1.")
    g = p.add_argument_group("model")
    p.add(g, "--from-pretrained", default=DEFAULTS["model"], metavar="PRESET|DIR",
          help="preset (cogvlm-tiny, cogvlm-chat-v1.1, cogvlm-base-490, cogvlm-base-224) or a checkpoint "
               "directory, SAT or Hugging Face (cogvlm-*-hf) layout")
    p.add(g, "--tokenizer", metavar="PATH", help="tokenizer.model (default: the checkpoint's own, or the tiny one)")

    g = p.add_argument_group("data")
    p.add(g, "--stage", default="sft", choices=["sft", "pretrain"],
          help="sft: conversations, loss on the answers; pretrain: captions {image,text}, interleaved "
               "{images,text with <image>}, plain {text} or conversations, every text token trained")
    p.add(g, "--train-data", nargs="+", metavar="FILE",
          help="training records, JSON/JSONL (default with run.sh: freshly generated synthetic data)")
    p.add(g, "--data-mix", metavar="SRC:W,...",
          help="pretrain: sample sources by weight instead of --train-data, e.g. "
               "captions.jsonl:0.6,docs/{000..015}.tar:0.3,text.jsonl:0.1 (seeded by --seed)")
    p.add(g, "--shuffle-buffer", type=int, default=1000, metavar="N",
          help="samples held for shuffling a streamed source (tar shards)")
    p.add(g, "--valid-data", nargs="+", metavar="FILE", help="records for the validation loss")
    p.add(g, "--no-validation", flag_only=True,
          help="no validation loss during training (the synthetic test.jsonl is not used as --valid-data)")
    p.add(g, "--eval-data", metavar="FILE",
          help="held-out VLMEvalKit-style TSV for generation accuracy (synthetic: test.tsv)")
    p.add(g, "--image-root", metavar="DIR", help="folder image paths are relative to (default: each data file's folder)")
    p.add(g, "--template", metavar="NAME", help="prompt template: chat_old, chat, vqa, base (default: the model's)")
    p.add(g, "--max-length", type=int, metavar="N", help="tokens per sample incl. image tokens (default: min(2048, model max))")
    p.add(g, "--truncation", default="cut", choices=["cut", "drop"],
          help="a sample longer than --max-length: cut at the end (no EOS trained at the cut) or dropped; "
               "both are counted at the start of training")
    p.add(g, "--packing", flag_only=True,
          help="pack whole samples into rows of --max-length tokens (first-fit-decreasing, seeded); each sample "
               "attends only to itself; --batch-size then counts rows")
    p.add(g, "--strict-data", flag_only=True, help="a bad record is an error (default: skipped and reported)")
    p.add(g, "--num-workers", type=int, metavar="N", help="data loader workers per process (default: 0 on CPU, 2 on GPU)")

    g = p.add_argument_group("training")
    from .recipes import RECIPES
    p.add(g, "--recipe", choices=sorted(RECIPES), metavar="NAME",
          help="a named set of defaults, printed in full when used; each of its values can still be given: "
               + "; ".join(f"{k}: {v[1]}" for k, v in RECIPES.items()))
    p.add(g, "--stage-loss-weights", default=DEFAULTS["stage_loss_weights"], metavar="STAGE=W,...",
          help="weight each trained token by its LLaVA-CoT stage, e.g. SUMMARY=0.5,CAPTION=1,REASONING=1,"
               "CONCLUSION=2 (tags belong to their stage; other tokens and unnamed stages weigh 1; the loss is "
               "the weighted mean, so all ones is the plain loss; '' or all ones switch it off; answers without "
               "stages are not affected)")
    p.add(g, "--train-iters", type=int, metavar="N", help=f"optimizer steps (default: {DEFAULTS['train_iters']} unless --epochs)")
    p.add(g, "--epochs", type=int, metavar="N", help="train for N epochs instead of --train-iters")
    p.add(g, "--batch-size", type=int, default=DEFAULTS["batch_size"], metavar="B", help="samples per process per micro-step")
    p.add(g, "--gradient-accumulation-steps", type=int, default=1, metavar="K", help="micro-steps per optimizer step")
    p.add(g, "--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (real 17B models: ~1e-5)")
    p.add(g, "--warmup", type=float, default=DEFAULTS["warmup"], help="warmup, as a fraction of the steps")
    p.add(g, "--lr-decay-style", default="cosine", choices=["cosine", "linear", "constant"], help="decay after warmup")
    p.add(g, "--weight-decay", type=float, default=DEFAULTS["weight_decay"], help="AdamW weight decay")
    p.add(g, "--seed", type=int, default=1234, help="random seed (model init, data order, dropout)")
    p.add(g, "--hidden-dropout", type=float, default=0.0,
          help="dropout on the hidden states (SAT's own default is 0.1; 0 keeps N processes equal to one)")
    p.add(g, "--attention-dropout", type=float, default=0.0, help="dropout on the attention probabilities")

    g = p.add_argument_group("what trains")
    p.add(g, "--finetune-mode", default="full", choices=["full", "lora"], help="full fine-tuning or LoRA")
    p.add(g, "--freeze", metavar="PARTS",
          help="parts whose weights stay fixed: vit, projector, vision_experts, language, none, all "
               "(default: none with full, all with lora)")
    p.add(g, "--lora-rank", type=int, default=8, help="LoRA rank r")
    p.add(g, "--lora-alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha / r)")
    p.add(g, "--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    p.add(g, "--lora-targets", default="language,vision_experts", metavar="PARTS",
          help="parts whose linear layers get adapters: language, vision_experts, vit, projector, all")

    g = p.add_argument_group("DeepSpeed and processes")
    p.add(g, "--deepspeed-config", metavar="NAME|FILE",
          help="zero2_bf16 (GPU default), zero3, cpu (CPU default) or a JSON file; batch size, gradient "
               "accumulation, lr and weight decay are filled from the options above")
    if launcher:
        p.add(g, "--num-gpus", type=int, metavar="N", help="processes per node (default: all GPUs, or 1 on CPU)")
        p.add(g, "--num-nodes", type=int, metavar="N", help="use the first N hosts of --hostfile")
        p.add(g, "--hostfile", metavar="FILE", help="DeepSpeed hostfile ('host slots=N' lines) for multi-node")
        p.add(g, "--master-addr", metavar="HOST", help="rendezvous host for multi-node")
        p.add(g, "--master-port", type=int, metavar="PORT", help="rendezvous port (default: a free one)")

    g = p.add_argument_group("checkpoints, evaluation, logs")
    p.add(g, "--save", default="checkpoints", metavar="DIR", help="checkpoints go to DIR/<experiment-name>-<MM-DD-HH-MM>")
    p.add(g, "--experiment-name", metavar="NAME", help="default: <model>-<finetune-mode>")
    p.add(g, "--save-format", default="pt", choices=["pt", "safetensors"],
          help="safetensors: each saved iteration also holds its weights as mp_rank_00_model_states.safetensors "
               "(loaded without pickle; the .pt keeps DeepSpeed's resume state), and the merged LoRA model is "
               "written in safetensors only")
    p.add(g, "--save-interval", type=int, default=0, metavar="N", help="save every N steps (0: only at the end)")
    p.add(g, "--eval-interval", type=int, metavar="N", help="validation loss every N steps (default: twice per run)")
    p.add(g, "--accuracy-interval", type=int, default=0, metavar="N",
          help="generation accuracy on --eval-data every N steps (0: before and after training only)")
    p.add(g, "--accuracy-limit", type=int, metavar="N", help="evaluate only the first N held-out items")
    p.add(g, "--accuracy-max-new-tokens", type=int, default=128, metavar="N",
          help="cap on each generated answer (synthetic answers are <= 83 tokens; long CoT data needs more)")
    p.add(g, "--accuracy-batch-size", type=int, default=64, metavar="N", help="questions decoded together")
    p.add(g, "--skip-accuracy", flag_only=True, help="no generation accuracy (validation loss only)")
    p.add(g, "--resume", metavar="DIR", help="continue a run from its checkpoint directory (exact: weights, "
                                             "optimizer, RNG, data order); saves continue there")
    p.add(g, "--attention-monitor-interval", type=int, default=0, metavar="N",
          help="every N steps: per layer, the share of text tokens' attention on image tokens, on a fixed probe "
               "batch (TensorBoard, train_log.jsonl, attention_text_to_image.png); 0: off")
    p.add(g, "--trust-checkpoint", flag_only=True,
          help="allow --from-pretrained / --resume checkpoint files that only load by running pickled code "
               "(old checkpoints; only for files from a source you trust)")
    p.add(g, "--log-interval", type=int, default=DEFAULTS["log_interval"], metavar="N", help="progress line every N steps")

    if launcher:
        g = p.add_argument_group("synthetic data (used when --train-data is not given)")
        p.add(g, "--synth-n", type=int, default=DEFAULTS["synth_n"], metavar="N", help="training items")
        p.add(g, "--synth-n-test", type=int, default=DEFAULTS["synth_n_test"], metavar="M", help="held-out items")
        p.add(g, "--synth-seed", type=int, default=DEFAULTS["synth_seed"], metavar="S", help="generator seed")
        p.add(g, "--synth-option-order", default="fixed", choices=["fixed", "shuffled"],
              help="fixed: a category always lists the same options, so the image decides the letter; "
                   "shuffled: the letter must also be looked up in the prompt (not learnt in a short run)")
        p.add(g, "--synth-answer-style", default="tagged", choices=["tagged", "plain", "direct"],
              help="tagged: the four LLaVA-CoT stages; plain: the same reasoning without tags; direct: the "
                   "<CONCLUSION> stage alone (benchmarks/cot_ablation.py compares them)")
        p.add(g, "--synth-category-weights", default=DEFAULTS["synth_category_weights"], metavar="CAT=W,...",
              help="mix of the training items by category (categories not named weigh 1; '' for an even mix); "
                   "the held-out items stay evenly split")
        p.add(g, "--synth-position-pairs", type=float, default=DEFAULTS["synth_position_pairs"], metavar="SHARE",
              help="share of the training position items with two shapes (where one is relative to the other; "
                   "the rest place one shape on a side); the held-out items keep half and half")
        p.add(g, "--synth-judge-data", type=float, default=0.0, metavar="FRACTION",
              help="add FRACTION x --synth-n judge-prompt samples (two candidate stages, one with a changed "
                   "value; 'Since ..., I choose response K.'), to teach the self judge of staged search")
        p.add(g, "--data-dir", default="data", metavar="DIR", help="where synthetic data sets are written (and reused)")
    return p


def parse(argv: Optional[Sequence[str]] = None, launcher: bool = True) -> Tuple[argparse.Namespace, List[str]]:
    """(our options, the rest for SAT). A --recipe (or COGCOT_RECIPE) supplies defaults first; what the
    command line or the environment sets explicitly still wins."""
    import sys
    from . import recipes
    parser = build_parser(launcher)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        recipes.apply(parser, args)
    except KeyError as e:
        raise ConfigError([e.args[0]]) from None
    opts, rest = parser.parse_known_args(args)
    return opts, rest


def resolve_deepspeed_config(name: Optional[str], cuda: bool) -> Path:
    if not name:
        name = "zero2_bf16" if cuda else "cpu"
    if name in NAMED_CONFIGS:
        return CONFIG_DIR / NAMED_CONFIGS[name]
    return Path(name)


def load_deepspeed_config(path: Path) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError([f"--deepspeed-config {path}: no such file (named configs: {', '.join(NAMED_CONFIGS)})"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError([f"--deepspeed-config {path}: invalid JSON at line {e.lineno}: {e.msg}"]) from None
    if not isinstance(config, dict):
        raise ConfigError([f"--deepspeed-config {path}: expected a JSON object"])
    return config


def deepspeed_config_problems(config: dict, path) -> List[str]:
    problems = []
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"--deepspeed-config {path}: zero_optimization.stage must be 0-3, got {stage!r}")
    if config.get("fp16", {}).get("enabled") and config.get("bf16", {}).get("enabled"):
        problems.append(f"--deepspeed-config {path}: fp16 and bf16 are both enabled")
    if "optimizer" not in config:
        problems.append(f"--deepspeed-config {path}: needs an 'optimizer' section (e.g. AdamW)")
    return problems


def fill_deepspeed_config(config: dict, opts) -> dict:
    """The run's config: the template plus this run's batch size, accumulation, lr and weight decay."""
    config = json.loads(json.dumps(config))
    config["train_micro_batch_size_per_gpu"] = opts.batch_size
    config["gradient_accumulation_steps"] = opts.gradient_accumulation_steps
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    params = config.setdefault("optimizer", {"type": "AdamW"}).setdefault("params", {})
    params["lr"] = opts.lr
    params["weight_decay"] = opts.weight_decay
    config.setdefault("steps_per_print", 10 ** 9)  # our progress line replaces DeepSpeed's
    return config


def _check_file(problems: List[str], flag: str, path: Optional[str]) -> None:
    if path and not Path(path).is_file():
        problems.append(f"{flag} {path}: no such file")


def _check_data_file(problems: List[str], flag: str, path: str) -> None:
    """A record file that exists must hold something (an empty one is a mistake, not zero samples)."""
    if not Path(path).is_file():
        problems.append(f"{flag} {path}: no such file")
        return
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                problems.append(f"{flag} {path}: no samples in {path} (the file is empty)")
                return
            if chunk.strip():
                return


def _check_source(problems: List[str], flag: str, spec: str, opts) -> None:
    """A record file, or (with --stage pretrain) a tar shard pattern whose every shard exists."""
    from dataset.shards import expand_pattern, is_shard_source
    if not is_shard_source(spec):
        _check_data_file(problems, flag, spec)
        return
    if opts.stage != "pretrain":
        problems.append(f"{flag} {spec}: tar shards are read with --stage pretrain only")
        return
    missing = [p for p in expand_pattern(spec) if not Path(p).is_file()]
    if missing:
        problems.append(f"{flag} {spec}: {len(missing)} shard(s) missing, e.g. {missing[0]}")


def _data_mix_problems(opts) -> List[str]:
    """--data-mix: pretraining only, not with --train-data, every source present, weights valid."""
    if not getattr(opts, "data_mix", None):
        return []
    from dataset.data_mix import parse_data_mix
    if opts.stage != "pretrain":
        return ["--data-mix needs --stage pretrain"]
    if opts.train_data:
        return ["--data-mix and --train-data exclude each other (put every source in the mix)"]
    try:
        sources = parse_data_mix(opts.data_mix)
    except ValueError as e:
        return [str(e)]
    problems: List[str] = []
    for source in sources:
        _check_source(problems, "--data-mix", source.spec, opts)
    return problems


def streams(opts) -> bool:
    """True when the training data is read as a stream (tar shards or a data mix)."""
    from dataset.shards import is_shard_source
    return bool(getattr(opts, "data_mix", None)) or any(is_shard_source(p) for p in opts.train_data or [])


def check(opts, cuda: bool, launcher: bool = False) -> dict:
    """Validate everything that can be checked without loading the model; raise ConfigError listing
    all problems. Returns the filled DeepSpeed config."""
    from .parts import parse_parts
    problems: List[str] = []
    # model
    src = opts.from_pretrained
    from models.config import PRESETS
    if src not in PRESETS and not Path(src).is_dir():
        problems.append(f"--from-pretrained {src}: neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    elif Path(src).is_dir():
        from models.hf_config import is_hf_dir
        if is_hf_dir(src):
            pass  # the Hugging Face layout: converted in memory when the model loads
        elif not (Path(src) / "model_config.json").is_file():
            problems.append(f"--from-pretrained {src}: neither model_config.json (SAT layout) nor a config.json "
                            "naming CogVLMForCausalLM (Hugging Face layout)")
        else:
            try:
                cfg = json.loads((Path(src) / "model_config.json").read_text())
                if "lora" in cfg:
                    problems.append(f"--from-pretrained {src}: a LoRA training checkpoint; merge it first "
                                    f"(python -m finetune.merge_lora {src}) or continue it with --resume")
            except json.JSONDecodeError as e:
                problems.append(f"--from-pretrained {src}/model_config.json: invalid JSON ({e.msg})")
    _check_file(problems, "--tokenizer", opts.tokenizer)
    # data
    if not opts.train_data and not launcher and not getattr(opts, "data_mix", None):
        problems.append("--train-data is required")
    for path in opts.train_data or []:
        _check_source(problems, "--train-data", path, opts)
    problems += _data_mix_problems(opts)
    for path in opts.valid_data or []:
        _check_data_file(problems, "--valid-data", path)
    _check_file(problems, "--eval-data", opts.eval_data)
    if opts.image_root and not Path(opts.image_root).is_dir():
        problems.append(f"--image-root {opts.image_root}: no such directory")
    if opts.template:
        from dataset.text_processor import TEMPLATES
        if opts.template not in TEMPLATES:
            problems.append(f"--template {opts.template}: unknown; choose from {', '.join(TEMPLATES)}")
    if getattr(opts, "synth_category_weights", None):
        from dataset.synth import parse_category_weights
        try:
            parse_category_weights(opts.synth_category_weights)
        except ValueError as e:
            problems.append(f"--synth-category-weights: {e}")
    if getattr(opts, "synth_position_pairs", None) is not None:
        from dataset.synth import check_pair_share
        try:
            check_pair_share(opts.synth_position_pairs)
        except ValueError as e:
            problems.append(f"--synth-position-pairs: {e}")
    if getattr(opts, "stage_loss_weights", None):
        from dataset.stage_weights import parse_stage_weights
        try:
            parse_stage_weights(opts.stage_loss_weights)
        except ValueError as e:
            problems.append(f"--stage-loss-weights: {e}")
    # schedule
    if opts.train_iters is not None and opts.epochs is not None:
        problems.append("--train-iters and --epochs exclude each other")
    if opts.epochs is not None and streams(opts):
        problems.append("--epochs needs data of known size; streamed data (tar shards, --data-mix) trains for --train-iters")
    if getattr(opts, "packing", False) and streams(opts):
        problems.append("--packing plans rows over data that can be indexed (JSON/JSONL files); streamed data "
                        "(tar shards, --data-mix) is not packed")
    for flag, value in (("--train-iters", opts.train_iters), ("--epochs", opts.epochs),
                        ("--batch-size", opts.batch_size), ("--gradient-accumulation-steps", opts.gradient_accumulation_steps),
                        ("--max-length", opts.max_length), ("--lora-rank", opts.lora_rank)):
        if value is not None and value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if not opts.lr > 0:
        problems.append(f"--lr must be > 0, got {opts.lr}")
    if not 0 <= opts.warmup < 1:
        problems.append(f"--warmup is a fraction of the steps in [0, 1), got {opts.warmup}")
    for flag, value in (("--attention-monitor-interval", opts.attention_monitor_interval),
                        ("--save-interval", opts.save_interval), ("--eval-interval", opts.eval_interval),
                        ("--accuracy-interval", opts.accuracy_interval)):
        if value is not None and value < 0:
            problems.append(f"{flag} must be >= 0, got {value}")
    # what trains
    try:
        parse_parts(opts.freeze)
    except ValueError as e:
        problems.append(f"--freeze: {e}")
    if opts.finetune_mode == "lora":
        try:
            targets = parse_parts(opts.lora_targets)
            frozen = parse_parts(opts.freeze if opts.freeze is not None else "all")
            both = [t for t in targets if t not in frozen]
            if not targets:
                problems.append("--lora-targets: at least one part")
            elif both:
                problems.append(f"--lora-targets {','.join(both)}: these parts also train fully (not in --freeze); "
                                f"freeze them or drop them from the LoRA targets")
        except ValueError as e:
            problems.append(f"--lora-targets: {e}")
    elif opts.freeze is not None and parse_parts_safe(opts.freeze) == list(_all_parts()):
        problems.append("--freeze all with --finetune-mode full leaves nothing to train")
    # resume
    if opts.resume:
        r = Path(opts.resume)
        if not (r / "latest").is_file() or not (r / "model_config.json").is_file():
            problems.append(f"--resume {opts.resume}: not a checkpoint directory of a run (needs latest and model_config.json)")
    # DeepSpeed
    path = resolve_deepspeed_config(opts.deepspeed_config, cuda)
    config = {}
    try:
        config = load_deepspeed_config(path)
        problems += deepspeed_config_problems(config, path)
    except ConfigError as e:
        problems += e.problems
    if launcher and getattr(opts, "hostfile", None):
        _check_file(problems, "--hostfile", opts.hostfile)
    if problems:
        raise ConfigError(problems)
    return fill_deepspeed_config(config, opts)


def _all_parts():
    from .parts import PARTS
    return PARTS


def parse_parts_safe(spec) -> list:
    from .parts import parse_parts
    try:
        return parse_parts(spec)
    except ValueError:
        return []
