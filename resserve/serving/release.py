"""A model's release: which version unversioned requests get, and how a candidate compares.

One :class:`Release` per model name, owned by the model manager. It routes an unversioned
request by ``traffic.split`` (or to the newest serving version), keeps the shadow comparison of
each (primary, candidate) pair, and decides on a candidate once ``traffic.promote`` has seen
enough: promoted (it takes every unversioned request) or rejected (the split's share for it goes
back to the others: a rollback). Decisions are written beside the model (``release.json``) so a
restart, or another worker, keeps them.
"""

from __future__ import annotations

import collections
import datetime
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from resserve.config import TrafficConfig
from resserve.files import atomic_write_text

log = logging.getLogger(__name__)

RELEASE_FILE = "release.json"
# Latencies kept per side of a comparison for its p50 / p99 (the most recent ones).
LATENCY_WINDOW = 10_000
# A release file larger than this is not one resserve wrote: refused unread.
MAX_RELEASE_FILE_BYTES = 1024 * 1024
Outcome = Literal["promoted", "rejected", "passed", "failed"]


class Decision(BaseModel):
    """What was decided about a candidate, and why (``passed`` / ``failed``: action report)."""

    candidate: str
    primary: str
    outcome: Outcome
    why: str
    at: str = Field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    compared: int = 0
    top1_agreement: float | None = None
    p99_ratio: float | None = None


class ReleaseRecord(BaseModel):
    """``<model>/release.json``: every decision, oldest first."""

    decisions: list[Decision] = Field(default_factory=list, max_length=10_000)

    def latest(self, candidate: str) -> Decision | None:
        found = [d for d in self.decisions if d.candidate == candidate]
        return found[-1] if found else None

    @property
    def promoted(self) -> str | None:
        """The version that takes every unversioned request: the newest promotion still standing."""
        for decision in reversed(self.decisions):
            if decision.outcome == "promoted" and self.latest(decision.candidate) is decision:
                return decision.candidate
        return None

    def rejected(self) -> set[str]:
        return {d.candidate for d in self.decisions if d.outcome == "rejected"
                and self.latest(d.candidate) is d}


def read_release(folder: Path) -> ReleaseRecord:
    """The model's release record; an empty one when there is none. A file that is not one
    resserve wrote is logged and ignored (routing falls back to the config)."""
    path = folder / RELEASE_FILE
    try:
        if path.stat().st_size > MAX_RELEASE_FILE_BYTES:
            raise ValueError(f"larger than {MAX_RELEASE_FILE_BYTES} bytes")
        return ReleaseRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return ReleaseRecord()
    except (OSError, ValueError, ValidationError) as exc:
        log.error("%s: not a release record (%s); ignored", path, str(exc).splitlines()[0])
        return ReleaseRecord()


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson's: sound near 0 and 1, where agreement lives)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(values), q)) if values else None


class Comparison:
    """The shadow comparison of one (primary, candidate) pair: agreement counts and latencies."""

    def __init__(self, primary: str, candidate: str) -> None:
        self.primary = primary
        self.candidate = candidate
        self.compared = 0
        self.top1_agreements = 0
        self.top5_overlap_sum = 0
        self.prob_l1_sum = 0.0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, collections.deque[float]] = {
            "primary": collections.deque(maxlen=LATENCY_WINDOW), "candidate": collections.deque(maxlen=LATENCY_WINDOW)}

    def add(self, top1_agree: np.ndarray, top5_overlap: np.ndarray, prob_l1: np.ndarray,
            primary_s: float, candidate_s: float) -> None:
        self.compared += int(top1_agree.size)
        self.top1_agreements += int(top1_agree.sum())
        self.top5_overlap_sum += int(top5_overlap.sum())
        self.prob_l1_sum += float(prob_l1.sum())
        self.latency["primary"].append(primary_s)
        self.latency["candidate"].append(candidate_s)

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agreements / self.compared if self.compared else None

    @property
    def p99_ratio(self) -> float | None:
        primary, candidate = quantile(self.latency["primary"], 0.99), quantile(self.latency["candidate"], 0.99)
        return candidate / primary if primary and candidate is not None else None

    def summary(self) -> dict[str, object]:
        low, high = wilson_interval(self.top1_agreements, self.compared)
        return {
            "primary": self.primary,
            "candidate": self.candidate,
            "compared": self.compared,
            "top1_agreements": self.top1_agreements,
            "top1_agreement": self.top1_agreement,
            "top1_agreement_95": [low, high],
            "top5_overlap_mean": self.top5_overlap_sum / self.compared if self.compared else None,
            "prob_l1_mean": self.prob_l1_sum / self.compared if self.compared else None,
            "dropped": dict(self.dropped),
            "latency_s": {side: {"p50": quantile(values, 0.5), "p99": quantile(values, 0.99), "count": len(values)}
                          for side, values in self.latency.items()},
            "p99_ratio": self.p99_ratio,
        }


class Release:
    """Routing and the canary of one model."""

    def __init__(self, name: str, folder: Path, traffic: TrafficConfig, rng: random.Random | None = None) -> None:
        self.name = name
        self.folder = folder
        self.traffic = traffic
        self.record = read_release(folder)
        self.comparisons: dict[tuple[str, str], Comparison] = {}
        self.rng = rng or random.Random()

    def configure(self, traffic: TrafficConfig) -> None:
        """New traffic settings (a reload or a poll read config.yaml again); comparisons go on."""
        self.traffic = traffic

    def reread(self) -> None:
        """Decisions another worker (or a restart) wrote."""
        self.record = read_release(self.folder)

    # --- routing -------------------------------------------------------------------------------

    def route(self, serving: Sequence[str]) -> str:
        """The version an unversioned request gets, of the versions now serving (oldest first, not
        empty): the promoted one, else by the split's weights over those serving (a rejected
        candidate's weight is 0), else the newest."""
        promoted = self.record.promoted
        if promoted is not None and promoted in serving:
            return promoted
        split = self.traffic.split
        if split:
            rejected = self.record.rejected()
            weighted = [(v, w) for v, w in split.items() if v in serving and w > 0 and v not in rejected]
            if weighted:
                total = sum(w for _, w in weighted)
                pick = self.rng.random() * total
                for version, weight in weighted:
                    pick -= weight
                    if pick < 0:
                        return version
                return weighted[-1][0]
        return serving[-1]

    def shadow_target(self, primary_version: str) -> str | None:
        """The candidate to mirror this request to, drawn at ``shadow.fraction``; None for none
        (no shadow, not drawn, the request was served by the candidate itself, or decided)."""
        shadow = self.traffic.shadow
        if shadow is None or shadow.target == primary_version:
            return None
        decided = self.record.latest(shadow.target)
        if decided is not None and decided.outcome in ("promoted", "rejected"):
            return None
        return shadow.target if self.rng.random() < shadow.fraction else None

    # --- the canary ----------------------------------------------------------------------------

    def comparison(self, primary: str, candidate: str) -> Comparison:
        key = (primary, candidate)
        if key not in self.comparisons:
            self.comparisons[key] = Comparison(primary, candidate)
        return self.comparisons[key]

    def judge(self, comparison: Comparison) -> Decision | None:
        """Decide on the candidate once ``promote.min_compared`` images were compared: the decision,
        written and logged, or None (not enough yet, no promote section, decided before)."""
        promote = self.traffic.promote
        if promote is None or comparison.compared < promote.min_compared \
                or self.record.latest(comparison.candidate) is not None:
            return None
        self.reread()  # another worker may have decided already
        if self.record.latest(comparison.candidate) is not None:
            return None
        agreement = comparison.top1_agreement or 0.0
        ratio = comparison.p99_ratio
        problems = []
        if agreement < promote.min_top1_agreement:
            problems.append(f"top-1 agreement {agreement:.4f} < {promote.min_top1_agreement}")
        if ratio is not None and ratio > promote.max_p99_ratio:
            problems.append(f"p99 ratio {ratio:.2f} > {promote.max_p99_ratio}")
        good = not problems
        why = "; ".join(problems) if problems else (
            f"top-1 agreement {agreement:.4f} >= {promote.min_top1_agreement}"
            + (f", p99 ratio {ratio:.2f} <= {promote.max_p99_ratio}" if ratio is not None else ""))
        outcome: Outcome = ("promoted" if good else "rejected") if promote.action == "promote" \
            else ("passed" if good else "failed")
        decision = Decision(candidate=comparison.candidate, primary=comparison.primary, outcome=outcome,
                            why=f"{why} over {comparison.compared} compared images", compared=comparison.compared,
                            top1_agreement=agreement, p99_ratio=ratio)
        self.record_decision(decision)
        return decision

    def record_decision(self, decision: Decision) -> None:
        """Keep the decision, write it beside the model (a read-only repository keeps it in memory
        only, said in the log) and log it."""
        self.record = read_release(self.folder)  # another worker may have written meanwhile
        self.record.decisions.append(decision)
        try:
            atomic_write_text(self.folder / RELEASE_FILE, self.record.model_dump_json(indent=2))
        except OSError as exc:
            log.error("model %s: cannot write %s (%s): the decision holds until this process restarts",
                      self.name, RELEASE_FILE, exc.strerror)
        log.warning("model %s: candidate %s %s (primary %s): %s", self.name, decision.candidate,
                    decision.outcome.upper(), decision.primary, decision.why)

    def status(self, serving: Sequence[str]) -> dict[str, object]:
        """``GET /v2/models/{m}/canary``: the comparisons so far and every decision."""
        return {
            "model": self.name,
            "serving": list(serving),
            "traffic": self.traffic.model_dump(exclude_none=True),
            "promoted": self.record.promoted,
            "comparisons": [c.summary() for c in self.comparisons.values()],
            "decisions": [d.model_dump() for d in self.record.decisions],
        }
