"""The LLaVA-CoT judge prompts (stage-specific comparisons of two responses, and the correct/incorrect
check of a reasoning), as text. The self and api judges of staged search ask them; `dataset.synth
--judge-data` writes training samples in the same words, so a model can be taught to answer them.
"""
from __future__ import annotations

from typing import Optional, Sequence

INTRO = "Now you act as a judge, helping me determine which of the two texts I provide "
PROMPTS = {  # kind -> (what "better" means, the reminder after the responses)
    "all": ("better answers the question.", ""),
    "sentence": ("is a better next sentence for the answer to the question.", ""),
    "summary": (
        "better provides a summary of what it should do to solve the question. The summary should focus on "
        "outlining the main approach instead of stating specific analytical reasoning or math formula.",
        "Please note that a better summary should focus on outlining the main approach instead of stating "
        "specific analytical reasoning or math formula."),
    "caption": (
        "better summarizes the information in the image related to the question, and has fewer errors. It is "
        "essential that the captions are as thorough as possible while remaining accurate, capturing as many "
        "details as possible rather than providing only general commentary.",
        "Please note that a better caption should be as thorough as possible while remaining accurate, capturing "
        "as many details as possible rather than providing only general commentary."),
    "reasoning": (
        "better explains the reasoning process to solve the question, and has fewer errors. Begin by thoroughly "
        "reviewing the question, followed by an in-depth examination of each answer individually, noting any "
        "differences. Subsequently, analyze these differences to determine which response demonstrates "
        "stronger reasoning and provide a clear conclusion.",
        "Begin by thoroughly reviewing the question, followed by an in-depth examination of each answer "
        "individually, noting any differences. Subsequently, analyze these differences to determine which "
        "response demonstrates stronger reasoning and provide a clear conclusion."),
    "conclusion": (
        "offers a more effective conclusion to the question. The conclusion should align with the reasoning "
        "presented in the hint. The conclusion should never refuse to answer the question.",
        "Please note that a better conclusion should align with the reasoning presented in the hint. The "
        "conclusion should never refuse to answer the question."),
}
FORMAT = (" Please strictly follow the following format requirements when outputting, and don't have any other "
           "unnecessary words.\n\nOutput format: \"Since [reason], I choose response [1/2].\"")
REASONING_CHECK = (
    "Now you act as a judge, helping me determine whether the reasoning process in the given text is correct and "
    "accurate based on the given information.\nYou should assume that the given information about the image is "
    "correct.\nYou should only consider the reasoning process itself, not the correctness of the background "
    "information.\nIf the reasoning process involves any calculations, you should verify the accuracy of the "
    "calculations.\nYou should output 'correct' if you don't find any errors in the reasoning process, and "
    "'incorrect' if you find any errors.")
# Hints per stage kind, as in the reference: the caption for reasoning, caption + reasoning for the conclusion.
HINTS = {"reasoning": ("CAPTION",), "conclusion": ("CAPTION", "REASONING")}




def comparison_prompt(kind: str, question: str, outputs: Sequence[str], hint: Optional[str]) -> str:
    """The reference judge's comparison prompt for a stage `kind` (its head, intro + question, is the same
    for every match of a step: the fast search reuses its cache)."""
    better, recall = PROMPTS.get(kind, (f"is a better {kind} for the answer to the question.", ""))
    head = INTRO + better + f"\n\nQuestion: {question}"
    tail = f"\n\nHint about the Question: {hint}" if hint else ""
    for i, out in enumerate(outputs):
        tail += f"\nResponse {i + 1}: {out}"
    tail += f"\n\n{recall}" + FORMAT
    return head + tail


def reasoning_check_prompt(hint: Optional[str], reasoning: str) -> str:
    return REASONING_CHECK + f"\n\nGiven Information: {hint}" + f"\n\nReasoning Process: {reasoning}"
