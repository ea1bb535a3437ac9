"""Front end of `bash finetune/run.sh`: read the options (command line and COGCOT_* environment),
generate the synthetic data when no training data is given, check everything that can be checked
before any process starts, then run finetune/finetune.py under the DeepSpeed launcher with the
options written out in full (so remote nodes need none of this environment).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from finetune import arguments
from models.sat_compat import free_port

ENTRY = Path(__file__).resolve().parent / "finetune.py"
LAUNCH_ONLY = ("num_gpus", "num_nodes", "hostfile", "master_addr", "master_port",
               "synth_n", "synth_n_test", "synth_seed", "synth_option_order", "data_dir", "recipe", "synth_answer_style",
               "synth_judge_data", "synth_category_weights", "synth_position_pairs")


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def synthetic_data(opts) -> Path:
    """Generate (or reuse) the synthetic train/test split named by its size and seed."""
    from dataset import synth
    style = "" if opts.synth_answer_style == "tagged" else f"-{opts.synth_answer_style}"
    style += f"-j{opts.synth_judge_data:g}" if opts.synth_judge_data else ""
    weights = synth.parse_category_weights(opts.synth_category_weights)
    if weights:  # the mix is part of the data set's name, so another mix is never mistaken for this one
        style += "-w" + "".join(f"{c[:3]}{weights[c]:g}" for c in synth.CATEGORIES if c in weights)
    if opts.synth_position_pairs != synth.DEFAULT_PAIR_SHARE:
        style += f"-pp{opts.synth_position_pairs:g}"
    out = Path(opts.data_dir) / (f"synth-v{synth.FORMAT_VERSION}-{opts.synth_option_order}{style}-n{opts.synth_n}"
                                 f"-t{opts.synth_n_test}-s{opts.synth_seed}")
    done = out / ".complete"
    if done.is_file():
        print(f"[data] reusing synthetic data {out}", flush=True)
        return out
    t = time.time()
    synth.generate(out, n=opts.synth_n, seed=opts.synth_seed, n_test=opts.synth_n_test,
                   option_order=opts.synth_option_order, answer_style=opts.synth_answer_style,
                   judge_data=opts.synth_judge_data, category_weights=weights,
                   position_pairs=opts.synth_position_pairs, progress=True)
    done.write_text("ok\n")
    print(f"[data] generated {opts.synth_n} training + {opts.synth_n_test} held-out items in {out} "
          f"({time.time() - t:.0f} s)", flush=True)
    return out


def finetune_argv(opts, passthrough: Sequence[str]) -> List[str]:
    """The options of finetune.py, every one written out (defaults included)."""
    parser = arguments.build_parser(launcher=False)
    argv: List[str] = []
    for action in parser._actions:  # the parser's own option list: one flag per destination
        if not action.option_strings or action.dest == "help" or action.dest in LAUNCH_ONLY:
            continue
        value = getattr(opts, action.dest, None)
        flag = action.option_strings[0]
        if action.nargs == 0:  # store_true
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv + list(passthrough)


def launcher_argv(opts, cuda: bool) -> List[str]:
    argv = [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]
    if opts.hostfile:
        argv += ["--hostfile", opts.hostfile]
        if opts.num_nodes:
            argv += ["--num_nodes", str(opts.num_nodes)]
    else:
        argv += ["--hostfile", os.devnull]  # no stray /job/hostfile: this machine only
    if opts.num_gpus is not None:
        argv += ["--num_gpus", str(opts.num_gpus)]
    elif not cuda:
        argv += ["--num_gpus", "1"]  # one CPU process unless asked for more
    if opts.master_addr:
        argv += ["--master_addr", opts.master_addr]
    argv += ["--master_port", str(opts.master_port or (29500 if opts.hostfile else free_port()))]
    return argv


def _checked(opts, cuda: bool) -> bool:
    """`arguments.check`, printing every problem found; False when the run cannot start."""
    try:
        arguments.check(opts, cuda, launcher=True)
    except arguments.ConfigError as e:
        print(f"finetune: cannot start:\n{e}", file=sys.stderr)
        return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        opts, passthrough = arguments.parse(argv, launcher=True)
    except arguments.ConfigError as e:
        print(f"finetune: bad environment variable:\n{e}", file=sys.stderr)
        return 2
    cuda = cuda_available()
    if opts.recipe:  # its values are written out below, so the entry point gets them as explicit options
        from finetune.recipes import describe
        print(describe(opts.recipe, opts, sys.argv[1:] if argv is None else argv), flush=True)
    if opts.num_gpus is not None and opts.num_gpus > 1 and not cuda and opts.deepspeed_config in (None, "cpu"):
        print(f"[run] {opts.num_gpus} CPU processes (data parallel over gloo)", flush=True)
    if not _checked(opts, cuda):  # everything but the data, before generating any
        return 2
    if not opts.train_data and not opts.data_mix:
        data = synthetic_data(opts)
        opts.train_data = [str(data / "train.jsonl")]
        if not opts.no_validation:
            opts.valid_data = opts.valid_data or [str(data / "test.jsonl")]
        opts.eval_data = opts.eval_data or str(data / "test.tsv")
    if not _checked(opts, cuda):
        return 2
    cmd = launcher_argv(opts, cuda) + [str(ENTRY)] + finetune_argv(opts, passthrough)
    print("[run] " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
