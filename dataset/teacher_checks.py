"""What the teacher asks and how its reply is checked: the prompt template (placeholders filled), the
named checks on a reply (`format`, `refusal`, `leak`, `answer`), and the `--verify llm` judgment.

Each check returns the problems it found as "name: what is wrong"; the names are what REJ.jsonl and the
end summary count rejections by.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from .cot_format import DEFAULT_STAGES, extract_conclusion, format_options, format_problems, match_option, parse_stages

DEFAULT_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "teacher_prompt.txt")
PLACEHOLDERS = {
    "question": "the question, without <image> markers and without its options",
    "options": "'Options: A. .. B. ..' for a multiple-choice question, '(no options: answer in words)' otherwise",
    "answer": "the standard answer: the option letter and its text ('D. yellow'), or the free-form answer",
    "hint": "'Hint: ...' when the sample has a hint, else empty",
    "conclusion_rule": "what the CONCLUSION holds: only the option letter, or a short final answer",
}
CHECKS = ("format", "refusal", "leak", "answer", "verify")


class TemplateError(ValueError):
    """A prompt template that cannot be used (unknown placeholder, no {question} or {answer})."""


@dataclass(frozen=True)
class Task:
    """What one sample asks the teacher: the question, its options ({} when free-form), the standard
    answer (the option letter when there are options), and an optional hint."""
    question: str
    options: Mapping[str, str]
    answer: str
    hint: Optional[str] = None


# ----------------------------------------------------------------------------- the prompt

def load_template(path: Optional[str] = None) -> str:
    """The template text (the shipped one by default); TemplateError when it cannot be used."""
    path = path or DEFAULT_TEMPLATE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: cannot read the prompt template ({e})") from None
    names = re.findall(r"(?<!\{)\{(\w*)\}(?!\})", text)
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        raise TemplateError(f"{path}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                            f"(known: {', '.join('{' + n + '}' for n in PLACEHOLDERS)}; write {{{{ }}}} for braces)")
    for needed in ("question", "answer"):
        if needed not in names:
            raise TemplateError(f"{path}: the template has no {{{needed}}} placeholder")
    return text


def fill_template(template: str, task: Task) -> str:
    """The instruction text for one task: each {name} replaced, {{ and }} written as braces."""
    values = {
        "question": task.question,
        "options": format_options(task.options) if task.options else "(no options: answer in words)",
        "answer": f"{task.answer}. {task.options[task.answer]}" if task.options else task.answer,
        "hint": f"Hint: {task.hint}" if task.hint else "",
        "conclusion_rule": ("For this multiple-choice question, write only the option letter." if task.options
                            else "Write the answer itself, briefly."),
    }
    filled = re.sub(r"(?<!\{)\{(\w+)\}(?!\})", lambda m: values[m.group(1)], template)
    return filled.replace("{{", "{").replace("}}", "}")


# ----------------------------------------------------------------------------- checks on a reply

_REFUSAL = re.compile(r"^\W*(?:I'?m sorry|I am sorry|sorry,|I apologi[sz]e|I can(?:no|')t|I am (?:not able|unable)"
                      r"|I'm (?:not able|unable)|As an AI|I (?:will|must) not|I won't)", re.I)
_LEAK = re.compile(r"\b(?:standard|reference|provided|given|known|expected|ground[- ]truth)\s+(?:answer|solution)\b"
                   r"|\bthe\s+hint\b|\bhint\s+(?:says|states|given|provided|suggests)\b"
                   r"|\banswer\s+(?:was|is|has been)\s+(?:given|provided|supplied)\b"
                   r"|\b(?:these|the|my|your)\s+instructions?\b"
                   r"|\bI\s+(?:was|am|have been)\s+(?:told|given|instructed)\b",
                   re.I)


def format_check(reply: str) -> List[str]:
    """The four tags present, in order, once each, each stage non-empty, nothing but space outside them."""
    problems = [f"format: {p}" for p in format_problems(reply)]
    if problems:
        return problems
    for name, body in parse_stages(reply).items():
        if not body:
            problems.append(f"format: <{name}> is empty")
    outside = reply
    for stage in DEFAULT_STAGES:
        outside = re.sub(re.escape(stage.start) + r".*?" + re.escape(stage.end), " ", outside, flags=re.S)
    if outside.strip():
        problems.append(f"format: text outside the tags: {outside.strip()[:60]!r}")
    return problems


def refusal_check(reply: str) -> List[str]:
    """A refusal at the start of the reply or of any stage ("I'm sorry", "I cannot", "As an AI", ...)."""
    pieces = [reply] + list(parse_stages(reply).values())
    for piece in pieces:
        m = _REFUSAL.search(piece)
        if m:
            return [f"refusal: {piece.strip()[:60]!r}"]
    return []


def leak_check(reply: str, task: Task) -> List[str]:
    """The reply talks about the standard answer, the hint or the instructions as given to it."""
    m = _LEAK.search(reply)
    if m:
        return [f"leak: mentions {m.group(0)!r}"]
    if task.hint and len(task.hint) >= 20 and normalise(task.hint) in normalise(reply):
        return ["leak: repeats the hint word for word"]
    return []


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: for free-form answers and hint matching."""
    text = re.sub(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def answer_check(reply: str, task: Task) -> List[str]:
    """The CONCLUSION agrees with the standard answer: the option matcher for multiple choice (letter
    or option text), normalised text for free-form answers."""
    conclusion = extract_conclusion(reply)
    if task.options:
        letter, _ = match_option(conclusion, task.options)
        if letter is None:
            return [f"answer: the conclusion {conclusion[:40]!r} names no option"]
        if letter != task.answer:
            return [f"answer: the conclusion picks {letter}, the standard answer is {task.answer}"]
        return []
    if normalise(conclusion) != normalise(task.answer):
        return [f"answer: the conclusion {conclusion[:40]!r} differs from the standard answer"]
    return []


def check_reply(reply: str, task: Task, verify: str = "match") -> List[str]:
    """Every problem of a reply (empty: accepted so far). With verify="llm" the answer check is left to
    the endpoint's judgment (`verify_prompt`, `read_verdict`), asked only when this returns nothing."""
    problems = refusal_check(reply) or format_check(reply)
    problems += leak_check(reply, task)
    if verify == "match" and not problems:
        problems += answer_check(reply, task)
    return problems


# ----------------------------------------------------------------------------- --verify llm

def verify_prompt(reply: str, task: Task) -> str:
    """Asks the endpoint whether the reply is a valid solution that agrees with the standard answer."""
    answer = f"{task.answer}. {task.options[task.answer]}" if task.options else task.answer
    opts = f"\n{format_options(task.options)}" if task.options else ""
    return ("You check worked solutions. Below are a question, its correct answer and a solution written in "
            "four tagged parts. Is the solution valid: is its reasoning sound, and does its CONCLUSION give the "
            "correct answer? Reply with one word: valid or invalid.\n\n"
            f"Question: {task.question}{opts}\nCorrect answer: {answer}\n\nSolution:\n{reply}")


def read_verdict(text: str) -> List[str]:
    """[] for a 'valid' judgment, a `verify:` problem for 'invalid' or an unclear one."""
    if re.search(r"\binvalid\b|\bnot\s+valid\b", text, re.I):
        return ["verify: judged invalid"]
    if re.search(r"\bvalid\b", text, re.I):
        return []
    return [f"verify: unclear judgment {text.strip()[:40]!r}"]


def check_names(reasons: List[str]) -> List[str]:
    """The check names of problems ("answer: ..." -> "answer"), in order, once each."""
    names: Dict[str, None] = {}
    for r in reasons:
        names.setdefault(r.split(":", 1)[0], None)
    return list(names)

