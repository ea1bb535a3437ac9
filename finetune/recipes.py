"""Named fine-tuning recipes: a set of option values chosen together, e.g. the LLaVA-CoT paper's settings
for the real checkpoints (`--recipe llava-cot`). A recipe only changes defaults: any of its values given
on the command line or as a COGCOT_* variable wins, and the whole recipe is printed when it is used.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

# name -> (option destination -> value, one line saying where the values come from)
RECIPES: Dict[str, Tuple[Dict[str, object], str]] = {
    "llava-cot": (
        {"finetune_mode": "full", "freeze": "none", "lr": 1e-5, "epochs": 3, "batch_size": 4,
         "no_validation": True},
        "LLaVA-CoT (Xu et al., 2024) fine-tuning settings: full fine-tune, lr 1e-5, 3 epochs, batch 4, "
        "no validation split"),
}
# Options that exclude each other: giving one on the command line drops the recipe's other.
_EXCLUSIVE = {"train_iters": "epochs", "epochs": "train_iters"}


def flag_of(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def recipe_name(argv: Sequence[str]) -> Optional[str]:
    """The --recipe of `argv` (also --recipe=NAME), else COGCOT_RECIPE, else None."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--recipe="):
            return a.split("=", 1)[1]
    return os.environ.get("COGCOT_RECIPE") or None


def given(dest: str, argv: Sequence[str], env_prefix: str = "COGCOT_") -> Optional[str]:
    """Where option `dest` was set explicitly: "command line", "environment" or None."""
    flag = flag_of(dest)
    if any(a == flag or a.startswith(flag + "=") for a in argv):
        return "command line"
    raw = os.environ.get(env_prefix + dest.upper())
    if raw is not None and raw.strip() != "":
        return "environment"
    return None


def recipe_defaults(name: str, argv: Sequence[str]) -> Tuple[Dict[str, object], List[str]]:
    """(the defaults to install: the recipe less what the user set, lines describing each value)."""
    if name not in RECIPES:
        raise KeyError(f"--recipe {name}: unknown; choose from {', '.join(RECIPES)}")
    values, _ = RECIPES[name]
    defaults: Dict[str, object] = {}
    lines: List[str] = []
    for dest, value in values.items():
        where = given(dest, argv)
        other = _EXCLUSIVE.get(dest)
        if where is None and other is not None and given(other, argv):
            where = f"dropped for {flag_of(other)}"
        if where is None:
            defaults[dest] = value
            lines.append(f"  {flag_of(dest):<18} {_show(value)}")
        else:
            lines.append(f"  {flag_of(dest):<18} {_show(value)} -> overridden ({where})")
    return defaults, lines


def describe(name: str, opts, argv: Sequence[str]) -> str:
    """The recipe printed in full: each value, whether it was overridden, and the value the run uses."""
    values, source = RECIPES[name]
    _, lines = recipe_defaults(name, argv)
    used = [f"{flag_of(d)} {_show(getattr(opts, d, None))}" for d in values]
    return (f"[recipe] {name}: {source}\n" + "\n".join(lines)
            + "\n[recipe] this run uses: " + ", ".join(used))


def _show(value) -> str:
    if value is True:
        return "on"
    if value is None or value is False:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def apply(parser, argv: Sequence[str]) -> Optional[str]:
    """Install the recipe named in `argv`/environment as `parser`'s defaults; returns its name (or None)."""
    name = recipe_name(argv)
    if name is None:
        return None
    defaults, _ = recipe_defaults(name, argv)
    parser.set_defaults(**defaults)
    return name
