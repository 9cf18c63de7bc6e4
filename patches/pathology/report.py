"""The slide report the model is trained to write, and how grade and survival risk are read back from text.

Template (one line; ``write_report``)::

    Tumour grade: G2 (moderately differentiated). Survival risk: intermediate (expected survival 14.1 to 33.0 months).

* Grade: ``G1`` well, ``G2`` moderately, ``G3`` poorly differentiated (``G4`` undifferentiated is parsed too).
* Risk group: ``high`` / ``intermediate`` / ``low`` = the shortest / middle / longest tertile of survival, with cut
  points from the *uncensored* survival months of the training set (``RiskBins.from_training``). A training
  slide is labelled by its observed months; a censored one is binned by its censoring time, a lower bound, the
  same convention as the discrete-time survival literature (MCAT/Patch-GCN bins). The month range in brackets is
  the group's range, for the reader.

Parsing is tolerant (case, "grade 2", "G 2", "high-risk"): ``parse_grade`` returns 1..4 or None and
``parse_risk`` returns the group and its risk score (high 2 > intermediate 1 > low 0; higher = worse) or None.
Unparseable text is counted by the tasks, never guessed.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

GRADE_WORDS = {1: "well differentiated", 2: "moderately differentiated", 3: "poorly differentiated",
               4: "undifferentiated"}
RISK_SCORE = {"low": 0, "intermediate": 1, "high": 2}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}
_GRADE_RE = re.compile(r"\bgrade\s*[:=]?\s*(?:G\s*)?([1-4]|IV|I{1,3})\b|\bG\s?([1-4])\b", re.IGNORECASE)
_RISK_RE = re.compile(r"\b(low|intermediate|high)[\s-]*risk\b|\brisk\s*(?:group)?\s*[:=]?\s*(low|intermediate|high)\b",
                      re.IGNORECASE)


@dataclass(frozen=True)
class RiskBins:
    """Month cut points: high risk below ``short``, low risk from ``long`` on, intermediate between."""

    short: float
    long: float

    @classmethod
    def from_training(cls, months, events) -> "RiskBins":
        months, events = np.asarray(months, float), np.asarray(events, bool)
        observed = months[events]
        if len(observed) < 3:
            raise ValueError(f"need at least 3 uncensored survival times for tertile bins, got {len(observed)}")
        short, long = np.quantile(observed, [1 / 3, 2 / 3])
        return cls(round(float(short), 1), round(float(long), 1))

    def group(self, months: float) -> str:
        return "high" if months < self.short else ("intermediate" if months < self.long else "low")

    def describe(self, group: str) -> str:
        return {"high": f"under {self.short:g} months", "intermediate": f"{self.short:g} to {self.long:g} months",
                "low": f"over {self.long:g} months"}[group]

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(asdict(self), fh)

    @classmethod
    def load(cls, path: str) -> "RiskBins":
        with open(path) as fh:
            return cls(**json.load(fh))


def write_report(grade: int, risk_group: str, bins: RiskBins) -> str:
    if grade not in GRADE_WORDS:
        raise ValueError(f"grade must be one of {sorted(GRADE_WORDS)}, got {grade!r}")
    if risk_group not in RISK_SCORE:
        raise ValueError(f"risk group must be one of {sorted(RISK_SCORE)}, got {risk_group!r}")
    return (f"Tumour grade: G{grade} ({GRADE_WORDS[grade]}). "
            f"Survival risk: {risk_group} (expected survival {bins.describe(risk_group)}).")


def parse_grade(text: str) -> int | None:
    match = _GRADE_RE.search(text or "")
    if not match:
        return None
    token = (match.group(1) or match.group(2)).upper()
    return _ROMAN.get(token) or int(token)


def parse_risk(text: str) -> tuple[str, int] | None:
    match = _RISK_RE.search(text or "")
    if not match:
        return None
    group = (match.group(1) or match.group(2)).lower()
    return group, RISK_SCORE[group]
