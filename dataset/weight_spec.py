"""`NAME=WEIGHT,...` option values (stage loss weights, category mixes): one parser, one set of errors."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence


def parse_weight_spec(spec: Optional[str], what: str, key: str, names: Sequence[str],
                      normalise: Callable[[str], str] = str.strip) -> Optional[Dict[str, float]]:
    """"A=0.5,B=1" -> {"A": 0.5, "B": 1.0} for the names given (`normalise` maps what was typed to a
    name); None or "" -> None. Raises ValueError naming the bad part: `what` says whose weight it is
    ("stage loss weight"), `key` what a name is ("STAGE")."""
    if spec is None or not str(spec).strip():
        return None
    weights: Dict[str, float] = {}
    for part in str(spec).replace(" ", ",").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = normalise(name)
        if not sep:
            raise ValueError(f"{what} {part!r}: expected {key}=WEIGHT")
        if name not in names:
            raise ValueError(f"{what} {part!r}: expected {key}=WEIGHT, unknown {key.lower()} {name!r}; "
                             f"choose from {', '.join(names)}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"{what} {part!r}: {value.strip()!r} is not a number") from None
        if not 0 <= w < float("inf"):  # also refuses NaN
            raise ValueError(f"{what} {part!r}: the weight must be a finite number >= 0")
        weights[name] = w
    return weights
