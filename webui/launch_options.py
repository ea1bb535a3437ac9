"""The Train tab's form, generated from the launcher's own argument parser (`finetune.arguments`), and the
exact `bash finetune/run.sh ...` command a filled form stands for; the two cannot drift apart."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from finetune import arguments

REPO = Path(__file__).resolve().parent.parent
RUN_SH = REPO / "finetune" / "run.sh"
_ENV_NOTE = re.compile(r"\s*\[env [A-Z0-9_]+\]$")


@dataclass(frozen=True)
class Option:
    """One launcher option as the form shows it."""
    dest: str
    flag: str
    group: str
    help: str
    default: Any
    kind: str  # "flag" (store_true), "choice", "list" (nargs +), "value"
    choices: Tuple[str, ...] = ()
    metavar: str = ""

    @property
    def is_path(self) -> bool:
        """Options naming files or folders (checked against the board's root)."""
        return any(w in (self.metavar or "") for w in ("FILE", "DIR", "PATH"))

    @property
    def shown_default(self) -> str:
        if self.default is None or self.default == []:
            return ""
        return " ".join(map(str, self.default)) if isinstance(self.default, list) else str(self.default)


def launcher_options() -> List[Option]:
    """Every option of `bash finetune/run.sh`, in the parser's groups and order."""
    parser = arguments.build_parser(launcher=True)
    out: List[Option] = []
    for group in parser._action_groups:  # argparse keeps no public list of its groups
        for a in group._group_actions:
            if not a.option_strings or a.dest == "help":
                continue
            if a.nargs == 0:
                kind = "flag"
            elif a.choices:
                kind = "choice"
            elif a.nargs in ("+", "*"):
                kind = "list"
            else:
                kind = "value"
            out.append(Option(a.dest, a.option_strings[0], group.title, _ENV_NOTE.sub("", a.help or ""),
                              a.default, kind, tuple(a.choices or ()), a.metavar or ""))
    return out


def groups(options: Sequence[Option]) -> Dict[str, List[Option]]:
    grouped: Dict[str, List[Option]] = {}
    for o in options:
        grouped.setdefault(o.group, []).append(o)
    return grouped


def form_argv(options: Sequence[Option], values: Sequence[Any], extra: str = "") -> List[str]:
    """The launcher arguments for the form's values: only the options that differ from their default,
    then the free-form extra arguments (handed to SAT unchanged)."""
    argv: List[str] = []
    for o, v in zip(options, values):
        if o.kind == "flag":
            if bool(v) and not o.default:
                argv.append(o.flag)
            continue
        text = "" if v is None else str(v).strip()
        if text == "" or text == o.shown_default:
            continue
        if o.kind == "list":
            argv += [o.flag, *text.replace(",", " ").split()]
        else:
            argv += [o.flag, text]
    try:
        argv += shlex.split(extra or "")
    except ValueError as e:
        raise BadOptions(f"extra arguments: {e}") from None
    return argv


class BadOptions(ValueError):
    """A form value the launcher's parser refuses (its own message)."""


def parse_argv(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Parse with the launcher's parser, turning its exit on a bad value into BadOptions."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return arguments.parse(list(argv), launcher=True)
    except SystemExit:
        lines = [l for l in err.getvalue().splitlines() if "error:" in l]
        raise BadOptions(lines[-1].split("error:", 1)[1].strip() if lines else err.getvalue().strip()) from None
    except arguments.ConfigError as e:
        raise BadOptions(str(e)) from None


def command(argv: Sequence[str], root: Path) -> List[str]:
    """The child process: run.sh by the path that works from the root (relative when the root is the repo)."""
    try:
        script = str(RUN_SH.relative_to(Path(root).resolve()))
    except ValueError:
        script = str(RUN_SH)
    return ["bash", script, *argv]


def command_line(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def script_text(cmd: Sequence[str], root: Path) -> str:
    """A shell script that runs the command from the board's root (the Download button's file)."""
    return ("#!/usr/bin/env bash\n# written by the cogcot board (python -m webui)\nset -euo pipefail\n"
            f"cd {shlex.quote(str(root))}\n{command_line(cmd)}\n")


def path_problems(opts: argparse.Namespace, options: Sequence[Option], root) -> List[str]:
    """Path-valued options that point outside the board's root (presets are not paths)."""
    from models.config import PRESETS
    from .paths import OutsideRoot
    problems = []
    for o in options:
        if not o.is_path:
            continue
        value = getattr(opts, o.dest, None)
        for v in value if isinstance(value, list) else [value]:
            if not v or (o.dest == "from_pretrained" and v in PRESETS):
                continue
            try:
                root.resolve(str(v), o.flag)
            except OutsideRoot as e:
                problems.append(str(e))
    return problems


def preview(options: Sequence[Option], values: Sequence[Any], extra: str, root) -> Tuple[List[str], Optional[str]]:
    """(the command, None) for a valid form, or ([], the problems as text)."""
    try:
        argv = form_argv(options, values, extra)
        opts, _ = parse_argv(argv)
    except BadOptions as e:
        return [], f"bad option: {e}"
    problems = path_problems(opts, options, root)
    if problems:
        return [], "\n".join(problems)
    return command(argv, root.path), None
