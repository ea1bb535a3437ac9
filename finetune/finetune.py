"""Fine-tune a CogVLM model: the entry point the DeepSpeed launcher runs on every process.

    python -m deepspeed.launcher.runner --num_gpus N finetune/finetune.py --train-data a.jsonl [options]

(`bash finetune/run.sh` builds this command.) SAT's `training_main` runs the loop with this project's
forward step, dataset factory and collator; which parameters train is decided by the parts that own
them (finetune/parts.py), LoRA adapters live in a `lora` mixin (finetune/lora.py). Checkpoints are in
the official SAT layout and resume exactly (finetune/checkpoint.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script by the launcher: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from finetune import arguments
from finetune.checkpoint import (barrier, load_training_checkpoint, newest_intact_iteration, read_trainer_state,
                                 restore_training_state, save_training_checkpoint)
from finetune.data import DatasetFactory, make_collator, split_batch
from finetune.lora import LoRAConfig, add_lora, freeze_for_lora
from finetune.parts import PARTS, apply_freeze, check_partition, format_summary, parse_parts, trainable_summary
from finetune.report import format_accuracy_table, plot_loss_curve, write_summary
from dataset.stage_weights import format_stage_weights, parse_stage_weights
from finetune.attention_monitor import AttentionMonitor, MonitoredStep, probe_batch
from finetune.token_report import CountingStep, TokenReport
from finetune.step import BetweenSteps, EvalStep, History, Progress, Schedule, TrainStep, global_sums
from models import sat_compat


def log(msg: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(msg, flush=True)


def sat_argv(opts, ds_config_path: str, num_workers: int, eval_interval: Optional[int]) -> list:
    """The SwissArmyTransformer arguments of this run (it never saves: checkpoints are ours)."""
    valid = [] if opts.no_validation else (opts.valid_data or [])
    argv = ["--mode", "pretrain", "--deepspeed", "--deepspeed_config", ds_config_path,
            "--train-data", *(opts.train_data or [opts.data_mix]), "--split", "1", "--strict-eval",
            "--batch-size", str(opts.batch_size), "--lr", str(opts.lr), "--warmup", str(opts.warmup),
            "--lr-decay-style", opts.lr_decay_style, "--weight-decay", str(opts.weight_decay),
            "--seed", str(opts.seed), "--hidden-dropout", str(opts.hidden_dropout),
            "--attention-dropout", str(opts.attention_dropout),
            "--log-interval", str(10 ** 9),  # our progress line replaces SAT's
            "--num-workers", str(num_workers), "--experiment-name", opts.experiment_name,
            "--summary-dir", opts.summary_dir]
    argv += ["--epochs", str(opts.epochs)] if opts.epochs else ["--train-iters", str(opts.train_iters)]
    if arguments.streams(opts):  # tar shards / a data mix: SAT's iterable-dataset path (no random mapping)
        argv += ["--iterable-dataset", "--iterable-dataset-eval", "False"]
    if valid:
        argv += ["--valid-data", *valid]
        if eval_interval is not None:  # with --epochs SAT defaults to once per epoch
            argv += ["--eval-interval", str(eval_interval)]
    return argv


def build_model(opts, sat_args, resume_iteration: Optional[int] = None):
    """(model, model args, LoRA config or None, iteration to resume from or 0)."""
    from models.cogvlm import CogVLMModel
    if not opts.resume:
        model, margs = CogVLMModel.from_pretrained(opts.from_pretrained, args=sat_args,
                                                   trust_checkpoint=opts.trust_checkpoint)
        lora = None
        if opts.finetune_mode == "lora":
            lora = LoRAConfig(rank=opts.lora_rank, alpha=opts.lora_alpha, dropout=opts.lora_dropout,
                              targets=tuple(parse_parts(opts.lora_targets)))
            add_lora(model, lora)
        return model, margs, lora, 0
    # Resume: the architecture (and LoRA structure) of the checkpoint, its weights.
    dtype = torch.bfloat16 if sat_args.bf16 else torch.half if sat_args.fp16 else torch.float
    return load_training_checkpoint(opts.resume, sat_args, dtype, iteration=resume_iteration,
                                    trust=opts.trust_checkpoint)


def held_out_accuracy(model, tokenizer, opts, template: str, image_size, out_path=None) -> Optional[dict]:
    """Greedy generation accuracy on --eval-data through inference.evaluate (rank 0 only)."""
    if opts.skip_accuracy or not opts.eval_data:
        return None
    try:
        from inference.evaluate import evaluate  # imported here only: finetune does not depend on inference
    except ModuleNotFoundError as e:
        if e.name not in ("inference", "inference.evaluate"):
            raise  # inference is there but something it imports is broken or missing: say so
        log(f"[eval] generation accuracy unavailable ({e}); reporting validation loss only")
        return None
    # evaluate() runs in eval mode without gradients and restores the model's mode after.
    return evaluate(model, tokenizer, opts.eval_data, template=template, mode="greedy",
                    batch_size=opts.accuracy_batch_size, limit=opts.accuracy_limit,
                    max_new_tokens=opts.accuracy_max_new_tokens, image_size=image_size,
                    out_path=out_path, progress=False)


def accuracy_overrides(margs) -> dict:
    """Model settings for measuring accuracy after training: the dtype (and device) the run trained and
    measured the accuracy before training in, so the two numbers compare like with like."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {"device": device, "bf16": bool(getattr(margs, "bf16", False)), "fp16": bool(getattr(margs, "fp16", False))}


class Run:
    """One fine-tuning run: the state SAT's hooks share (no module-level globals)."""

    def __init__(self, opts, sat_args):
        self.opts, self.sat_args = opts, sat_args
        self.rank = sat_args.rank
        self.world = sat_args.world_size
        # the iteration `latest` names, or the newest intact one if that cannot be read (reported)
        resume_at = newest_intact_iteration(opts.resume, log=log) if opts.resume else None
        self.model, self.margs, self.lora, self.start_iteration = build_model(opts, sat_args, resume_at)
        from models.tokenizer import tokenizer_for
        source = opts.resume or opts.from_pretrained
        self.tokenizer = tokenizer_for(source, getattr(self.margs, "tokenizer_type", None), opts.tokenizer)
        if self.tokenizer.vocab_size > self.margs.vocab_size:
            raise arguments.ConfigError([f"tokenizer has {self.tokenizer.vocab_size} pieces but the model only "
                                         f"{self.margs.vocab_size} embeddings"])
        self.template = opts.template or getattr(self.margs, "text_processor_version", "chat_old")
        self.image_size = list(self.margs.eva_args["image_size"])
        self.max_length = opts.max_length or min(2048, self.margs.max_sequence_length)
        self.trainer_state = (read_trainer_state(opts.resume, resume_at, trust=opts.trust_checkpoint)
                              if opts.resume else {})
        self.ckpt_dir: Optional[Path] = Path(opts.resume) if opts.resume else None
        self.history = History()
        self.accuracy_before = self.accuracy_after = None
        self.t_train = None
        self.progress: Optional[Progress] = None
        self.step: Optional[TrainStep] = None
        self.factory: Optional[DatasetFactory] = None
        self.counting: Optional[CountingStep] = None  # pretraining: per-source modality counts
        self.monitored: Optional[MonitoredStep] = None  # --attention-monitor-interval

    # -- what trains ---------------------------------------------------------------------------
    def set_trainable(self) -> None:
        if self.lora is not None:
            frozen = parse_parts(self.opts.freeze if self.opts.freeze is not None else "all")
            freeze_for_lora(self.model, [p for p in PARTS if p not in frozen])
            check_partition(self.model, [self.model.mixins["lora"]])
        else:
            apply_freeze(self.model, parse_parts(self.opts.freeze))
            check_partition(self.model)
        extra = {"lora": self.model.mixins["lora"]} if self.lora is not None else None
        log("[model] trainable parameters by part:\n" + format_summary(trainable_summary(self.model, extra)))

    # -- SAT hooks -----------------------------------------------------------------------------
    def init_function(self, args, model) -> None:
        """Called by training_main after SAT named the experiment and before DeepSpeed starts."""
        if self.opts.resume:
            args.experiment_name = self.ckpt_dir.name
            args.summary_dir = str(self.ckpt_dir.parent)
            args.iteration = self.start_iteration
        else:
            if self.rank == 0:
                base = Path(self.opts.save) / args.experiment_name
                ckpt, k = base, 1
                while ckpt.exists():  # SAT names by the minute: never mix two runs' checkpoints
                    k += 1
                    ckpt = base.with_name(f"{base.name}-{k}")
                ckpt.mkdir(parents=True)
                names = [ckpt.name]
            else:
                names = [None]
            if torch.distributed.is_initialized():
                torch.distributed.broadcast_object_list(names, src=0)
            args.experiment_name = names[0]
            self.ckpt_dir = Path(self.opts.save) / names[0]
        if self.rank == 0:
            self.history.attach(str(self.ckpt_dir / "train_log.jsonl"),
                                keep_until=self.start_iteration if self.opts.resume else None)
        total = args.train_iters  # with --epochs SAT has just derived it from the data loader
        self.step.schedule = Schedule(lr=self.opts.lr, total_iters=args.lr_decay_iters or total,
                                      warmup=self.opts.warmup, style=self.opts.lr_decay_style,
                                      decay_ratio=args.lr_decay_ratio)
        if self.rank == 0:
            self.step.progress = self.progress = Progress(total, self.opts.log_interval, printer=log)
        if self.counting is not None:
            names = self.factory.train_sources or [", ".join(self.opts.train_data or [])]
            self.counting.report = TokenReport(names, self.opts.log_interval, total,
                                               reduce=lambda v: global_sums(v, torch.device(args.device)),
                                               printer=log, history=self.history, is_rank0=self.rank == 0)
        if self.monitored is not None:
            self.monitored.monitor = self.attention_monitor(args)
        log(f"[run] checkpoints: {self.ckpt_dir}  (TensorBoard: {Path(args.summary_dir) / 'runs' / args.experiment_name})")

    def attention_monitor(self, args) -> AttentionMonitor:
        """The monitor over a probe batch of the first training data set, TensorBoard beside SAT's (rank 0)."""
        from tensorboardX import SummaryWriter
        batch = probe_batch(self.factory.train_datasets[0], make_collator(self.tokenizer.pad_token_id))
        writer = SummaryWriter(str(Path(args.summary_dir) / "runs" / args.experiment_name)) if self.rank == 0 else None
        log(f"[attention] text->image attention measured every {self.opts.attention_monitor_interval} steps on "
            f"{len(batch['lengths'])} probe samples ({int(batch.get('num_images', torch.zeros(1)).sum())} images)")
        return AttentionMonitor(batch, self.opts.attention_monitor_interval, split_batch, dtype=self.step.dtype,
                                history=self.history, writer=writer, printer=log, is_rank0=self.rank == 0)

    def resume(self, engine, iteration: int) -> int:
        """Optimizer state, RNG and data position of the checkpoint; returns micro-batches to skip."""
        restore_training_state(engine, self.ckpt_dir, iteration, trust=self.opts.trust_checkpoint)
        consumed = int(self.trainer_state.get("consumed_samples", 0))
        per_micro = self.opts.batch_size * self.world
        if consumed % per_micro:
            log(f"[resume] {consumed} samples consumed is not a multiple of this run's {per_micro} per micro-step: "
                f"the data order continues approximately")
        skip = consumed // per_micro
        if arguments.streams(self.opts):  # the stream was built to start after them (DataMix skip_batches)
            log(f"[resume] iteration {iteration}: optimizer, RNG restored; the data stream starts after the {skip} "
                f"micro-batches already trained on (draws replayed, nothing re-read)")
            return 0
        log(f"[resume] iteration {iteration}: optimizer, RNG restored; skipping {skip} micro-batches already trained on")
        return skip

    def resume_batches(self) -> int:
        """Micro-batches of this rank already trained on by the checkpointed run (0 without --resume)."""
        consumed = int(self.trainer_state.get("consumed_samples", 0)) if self.opts.resume else 0
        return consumed // (self.opts.batch_size * self.world)

    def state_for(self, iteration: int) -> dict:
        o = self.opts
        return {"iteration": iteration, "consumed_samples": iteration * o.batch_size * self.world * o.gradient_accumulation_steps,
                "world_size": self.world, "batch_size": o.batch_size,
                "gradient_accumulation_steps": o.gradient_accumulation_steps, "seed": o.seed,
                "finetune_mode": "lora" if self.lora else "full", "freeze": o.freeze,
                "train_data": [str(Path(p).resolve()) for p in o.train_data or []], "data_mix": o.data_mix,
                "from_pretrained": self.trainer_state.get("from_pretrained", o.from_pretrained),
                "train_iters": self.sat_args.train_iters, "template": self.template}

    def save(self, engine, iteration: int) -> Path:
        t = time.time()
        path = save_training_checkpoint(engine, self.ckpt_dir, iteration, self.state_for(iteration),
                                        tokenizer_file=self.tokenizer.model_file, lora_config=self.lora,
                                        save_format=self.opts.save_format)
        log(f"[save] iteration {iteration} -> {path} ({time.time() - t:.1f} s)")
        return path

    def accuracy(self, engine, iteration: int) -> None:
        if engine.zero_optimization_partition_weights():
            log("[eval] accuracy during training is not available with ZeRO-3 (it is measured at the end)")
            return
        if self.rank == 0:
            result = held_out_accuracy(engine.module, self.tokenizer, self.opts, self.template, self.image_size)
            if result:
                self.history.add("accuracy", {"step": iteration, "accuracy": result["accuracy"]})
                log(f"[eval] step {iteration}: held-out accuracy {100 * result['accuracy']:.1f}% (n={result['n']})")
        barrier()

    # -- the run -------------------------------------------------------------------------------
    def train(self):
        from sat.training.deepspeed_training import training_main
        o, margs = self.opts, self.margs
        dtype = torch.bfloat16 if margs.bf16 else torch.half if margs.fp16 else None
        if self.rank == 0:
            self.accuracy_before = held_out_accuracy(self.model, self.tokenizer, o, self.template, self.image_size)
            if self.accuracy_before:
                label = "at resume" if o.resume else "before training"
                log(f"[eval] held-out accuracy {label}: {100 * self.accuracy_before['accuracy']:.1f}% "
                    f"(n={self.accuracy_before['n']})")
        barrier()
        between = BetweenSteps(resume=self.resume if o.resume else None, save=self.save,
                               save_interval=o.save_interval, accuracy=self.accuracy,
                               accuracy_interval=o.accuracy_interval)
        step = TrainStep(self.history, between, dtype=dtype, is_rank0=self.rank == 0)
        self.step = step
        factory = DatasetFactory(self.tokenizer, self.image_size, margs.image_length, self.max_length, self.template,
                                 image_root=o.image_root, strict=o.strict_data, truncation=o.truncation, log=log,
                                 stage=o.stage, stage_weights=parse_stage_weights(o.stage_loss_weights),
                                 streaming=arguments.streams(o), seed=o.seed, shuffle_buffer=o.shuffle_buffer,
                                 resume_batches=self.resume_batches())
        if o.stage_loss_weights:
            log(f"[data] per-stage loss weights: {format_stage_weights(parse_stage_weights(o.stage_loss_weights))}")
        self.factory = factory
        if o.packing:  # rows of --max-length tokens, whole samples, planned with the run's seed
            from dataset.packing import packed_factory
            factory = packed_factory(factory, self.max_length, seed=o.seed, log=log)
        forward = step
        if o.stage == "pretrain":
            forward = self.counting = CountingStep(step)
        if o.attention_monitor_interval:
            forward = self.monitored = MonitoredStep(forward)
        self.t_train = time.time()
        engine = training_main(margs, model_cls=self.model, forward_step_function=forward,
                               create_dataset_function=factory, collate_fn=make_collator(self.tokenizer.pad_token_id),
                               forward_step_eval=EvalStep(step, dtype=dtype), init_function=self.init_function)
        self.t_train = time.time() - self.t_train
        iteration = margs.iteration
        step.finish(iteration)
        return engine, iteration

    def finish(self, engine, iteration: int) -> dict:
        """Final checkpoint (merged for LoRA), accuracy after training from the saved files, plot, summary."""
        from models.cogvlm import CogVLMModel
        o = self.opts
        monitor = self.monitored.monitor if self.monitored is not None else None
        if monitor is not None and monitor.due(iteration):  # the weights after the last step
            monitor.run(engine, iteration)
        if iteration > self.start_iteration:
            self.save(engine, iteration)
        final_dir = self.ckpt_dir
        if self.lora is not None:
            if self.rank == 0:
                from finetune.merge_lora import merge_checkpoint
                final_dir = merge_checkpoint(self.ckpt_dir, self.ckpt_dir / "merged", iteration=iteration,
                                             save_format=o.save_format)
                log(f"[lora] adapters merged into the base weights -> {final_dir}")
            final_dir = self.ckpt_dir / "merged"
        del engine
        barrier()
        summary = {}
        if self.rank == 0:
            final, _ = CogVLMModel.from_pretrained(str(final_dir), overrides=accuracy_overrides(self.margs))
            self.accuracy_after = held_out_accuracy(final, self.tokenizer, o, self.template, self.image_size,
                                                    out_path=str(self.ckpt_dir / "eval_after.jsonl"))
            if self.accuracy_after:
                self.history.add("accuracy", {"step": iteration, "accuracy": self.accuracy_after["accuracy"]})
            png = plot_loss_curve(self.history, self.ckpt_dir / "loss_curve.png",
                                  title=f"{self.ckpt_dir.name}: {o.finetune_mode}, {iteration} steps")
            heatmap = monitor.plot(self.ckpt_dir / "attention_text_to_image.png") if monitor is not None else None
            if heatmap:
                log(f"[done] text->image attention heatmap: {heatmap}")
            trained = iteration - self.start_iteration
            samples = trained * o.batch_size * self.world * o.gradient_accumulation_steps
            summary = {
                "checkpoint": str(final_dir), "training_checkpoint": str(self.ckpt_dir), "iteration": iteration,
                "finetune_mode": o.finetune_mode, "train_seconds": round(self.t_train or 0.0, 1),
                "samples_per_second": round(self.progress.samples_per_second, 2) if self.progress else None,
                "tokens_per_second": round(self.progress.tokens_per_second, 1) if self.progress else None,
                "wall_samples_per_second": round(samples / self.t_train, 2) if self.t_train else None,
                "final_train_loss": self.history.train[-1]["loss"] if self.history.train else None,
                "final_valid_loss": self.history.valid[-1]["loss"] if self.history.valid else None,
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "loss_curve": str(png) if png else None,
                "chat_command": f"python -m inference.cli_demo --from_pretrained {final_dir}",
            }
            write_summary(self.ckpt_dir / "finetune_summary.json",
                          {k: v for k, v in summary.items() if k not in ("accuracy_before", "accuracy_after")}
                          | {"accuracy_before": _strip(self.accuracy_before), "accuracy_after": _strip(self.accuracy_after)})
            print_summary(summary, self.history)
        barrier()
        return summary


def _strip(result: Optional[dict]) -> Optional[dict]:
    """An evaluate() result without its per-question records (they go to eval_after.jsonl)."""
    return None if result is None else {k: v for k, v in result.items() if k != "records"}


def print_summary(s: dict, history: History) -> None:
    head = f"[done] {s['iteration']} steps in {s['train_seconds']:.0f} s ({s['samples_per_second']} samples/s)"
    if s["final_train_loss"] is not None:
        head += f"; final train loss {s['final_train_loss']:.4f}"
    if s["final_valid_loss"] is not None:
        head += f", validation loss {s['final_valid_loss']:.4f}"
    lines = ["", "=" * 78, head]
    if s["accuracy_before"] or s["accuracy_after"]:
        lines += ["[done] held-out accuracy, before -> after:",
                  format_accuracy_table(s["accuracy_before"], s["accuracy_after"])]
    else:
        lines += ["[done] generation accuracy not measured (no --eval-data, --skip-accuracy, or inference.evaluate missing)"]
    lines += [f"[done] checkpoint: {s['checkpoint']}"]
    if s["checkpoint"] != s["training_checkpoint"]:
        lines += [f"[done] training checkpoint (with adapters, resumable): {s['training_checkpoint']}"]
    if s["loss_curve"]:
        lines += [f"[done] loss curve: {s['loss_curve']}"]
    lines += [f"[done] chat with it:  {s['chat_command']}", "=" * 78]
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    opts, sat_rest = arguments.parse(argv, launcher=False)
    if opts.recipe:
        from finetune.recipes import describe
        print(describe(opts.recipe, opts, sys.argv[1:] if argv is None else argv), flush=True)
    cuda = torch.cuda.is_available()
    try:
        ds_config = arguments.check(opts, cuda)
    except arguments.ConfigError as e:
        print(f"finetune: cannot start:\n{e}", file=sys.stderr, flush=True)
        return 2
    if opts.train_iters is None and opts.epochs is None:
        opts.train_iters = arguments.DEFAULTS["train_iters"]
    if not opts.experiment_name:
        base = Path(opts.from_pretrained).name if Path(opts.from_pretrained).is_dir() else opts.from_pretrained
        opts.experiment_name = f"{base}-{opts.finetune_mode}"
    opts.summary_dir = opts.save
    sat_compat.apply()
    if not cuda:  # share the cores among the local processes instead of oversubscribing them
        local = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    num_workers = opts.num_workers if opts.num_workers is not None else (2 if cuda else 0)
    eval_interval = opts.eval_interval
    if eval_interval is None and opts.train_iters:
        eval_interval = max(1, opts.train_iters // 2)  # each pass costs training time; the curve needs few points
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="cogcot-ds-", delete=False) as f:
        json.dump(ds_config, f)
        ds_path = f.name
    try:
        sat_args = sat_compat.get_args(sat_argv(opts, ds_path, num_workers, eval_interval) + sat_rest)
    finally:
        os.unlink(ds_path)
    from models.checkpoint import CheckpointError
    try:
        run = Run(opts, sat_args)
    except (arguments.ConfigError, CheckpointError) as e:
        print(f"finetune: cannot start:\n{e}", file=sys.stderr, flush=True)
        return 2
    run.set_trainable()
    if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:  # every rank must run every module
        from models.cogvlm import run_every_module
        run_every_module(run.model)
    from dataset import DatasetError
    try:
        trained = run.train()  # (engine, iteration)
    except DatasetError as e:  # no usable samples, or the first bad record with --strict-data
        print(f"finetune: cannot train: {e}", file=sys.stderr, flush=True)
        return 2
    except CheckpointError as e:  # a resume file refused (pickled code) or unreadable
        print(f"finetune: cannot resume: {e}", file=sys.stderr, flush=True)
        return 2
    run.finish(*trained)  # finish drops the engine before evaluating
    return 0


if __name__ == "__main__":
    sys.exit(main())
