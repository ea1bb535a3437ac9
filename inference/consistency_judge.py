"""The self-consistency judge ("consistency"): each candidate of a step is continued greedily to the end
of the answer, and a candidate whose continuation reaches the conclusion most candidates reach beats one
that does not (a tie falls back to mean log-probability). It needs no judge prompt the model was never
trained on: it asks the searched model only to go on answering, which it was trained to do.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from dataset.cot_format import extract_conclusion

from .judges import Candidate, Judge, Match, Verdict, logprob_verdict


def normalised(conclusion: str) -> str:
    """A conclusion as a vote: lower case, inner whitespace collapsed, a final period dropped."""
    return " ".join(conclusion.lower().split()).rstrip(".")


class ConsistencyJudge(Judge):
    """Majority of the step's candidates' quick continuations (needs `Match.complete_many`).

    The votes of a step are computed once (all its candidates, one batch) and kept for its matches; the
    conclusion stage's candidates already hold their conclusion and vote without a continuation.
    """
    name = "consistency"

    def __init__(self):
        self._step: Optional[int] = None  # step_seed of the votes below
        self._votes: Dict[int, str] = {}  # candidate index -> its conclusion (normalised)
        self.majority: Optional[str] = None

    def votes(self, match: Match) -> Dict[int, str]:
        if self._step != match.step_seed:
            cands = list(match.candidates)
            final_end = match.stages[-1].end if match.stages else "</CONCLUSION>"
            todo = [c for c in cands if final_end not in c.answer_text and c.finish != "eos"]
            if todo and match.complete_many is None:
                raise ValueError("the consistency judge needs the search to continue candidates (match.complete_many)")
            rests = dict(zip((c.index for c in todo), match.complete_many([c.tokens for c in todo]) if todo else []))
            self._votes = {c.index: normalised(extract_conclusion(c.answer_text + rests.get(c.index, "")))
                           for c in cands}
            counts = Counter(v for v in self._votes.values() if v)
            top = counts.most_common(2)
            # a clear majority only: a tie between the two most frequent conclusions decides nothing
            self.majority = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
            self._step = match.step_seed
        return self._votes

    def __call__(self, match: Match, a: Candidate, b: Candidate) -> Verdict:
        votes = self.votes(match)
        agree = [votes.get(c.index) == self.majority and self.majority is not None for c in (a, b)]
        raw = f"conclusions: {votes.get(a.index)!r} vs {votes.get(b.index)!r}; majority {self.majority!r}"
        if agree[0] != agree[1]:
            k = 0 if agree[0] else 1
            return Verdict(k, f"response {k + 1}'s continuation reaches the majority conclusion "
                              f"{self.majority!r}", raw)
        return logprob_verdict(a, b, "both or neither reach the majority conclusion; ", raw)

    def judge_many(self, items: Sequence[Tuple[Match, Candidate, Candidate]]) -> List[Verdict]:
        return [self(m, a, b) for m, a, b in items]
