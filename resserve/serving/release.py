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
import contextlib
import datetime
import fcntl
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from resserve.config import TrafficConfig
from resserve.files import atomic_write_text, read_regular_file

log = logging.getLogger(__name__)

RELEASE_FILE = "release.json"
LOCK_FILE = ".release.lock"
# Latencies kept per side of a comparison for its p50 / p99 (the most recent ones).
LATENCY_WINDOW = 10_000
# A release file larger than this is not one resserve wrote: refused unread.
MAX_RELEASE_FILE_BYTES = 1024 * 1024
MAX_DECISIONS = 1000  # the history kept in the file (about 300 bytes each)
# How often routing looks at release.json's time for another worker's (or an operator's) change.
REREAD_EVERY_S = 1.0
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
    """``<model>/release.json``: the decisions, oldest first (the last ``MAX_DECISIONS`` kept)."""

    decisions: list[Decision] = Field(default_factory=list)

    def latest(self, candidate: str) -> Decision | None:
        for decision in reversed(self.decisions):
            if decision.candidate == candidate:
                return decision
        return None

    def standing(self) -> dict[str, Decision]:
        """Each candidate's latest decision (one pass)."""
        return {d.candidate: d for d in self.decisions}


def read_release(folder: Path) -> ReleaseRecord:
    """The model's release record; an empty one when there is none. A file that is not one
    resserve wrote (not a regular file, a link, too large, not a record) is logged and ignored:
    routing then follows the config alone."""
    path = folder / RELEASE_FILE
    try:
        return ReleaseRecord.model_validate_json(read_regular_file(path, MAX_RELEASE_FILE_BYTES))
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
        self._summary: tuple[tuple[int, int], dict[str, object]] | None = None

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
        """The figures ``GET .../canary`` shows; the quantiles over the latency windows are worked
        out again only once something new was compared (the endpoint is open to any caller
        inference admits)."""
        if self._summary is not None and self._summary[0] == (self.compared, sum(self.dropped.values())):
            return self._summary[1]
        low, high = wilson_interval(self.top1_agreements, self.compared)
        summary: dict[str, object] = {
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
        self._summary = ((self.compared, sum(self.dropped.values())), summary)
        return summary


class Release:
    """Routing and the canary of one model."""

    def __init__(self, name: str, folder: Path, traffic: TrafficConfig, rng: random.Random | None = None) -> None:
        self.name = name
        self.folder = folder
        self.traffic = traffic
        self.comparisons: dict[tuple[str, str], Comparison] = {}
        self.rng = rng or random.Random()
        self.unsaved: list[Decision] = []  # decisions a read-only repository could not keep
        self._file_seen: tuple[int, int] | None = None
        self._checked_at = 0.0
        self.record = ReleaseRecord()
        self.promoted: str | None = None
        self.rejected: frozenset[str] = frozenset()
        self.decided: frozenset[str] = frozenset()
        self.reread()

    def configure(self, traffic: TrafficConfig) -> None:
        """New traffic settings (a reload or a poll read config.yaml again); comparisons go on."""
        self.traffic = traffic

    def reread(self) -> None:
        """Decisions another worker, a restart or an operator wrote (this process's unsaved ones kept)."""
        self._file_seen = self._file_stamp()
        record = read_release(self.folder)
        record.decisions.extend(d for d in self.unsaved if d not in record.decisions)
        self._apply(record)

    def _apply(self, record: ReleaseRecord) -> None:
        """What routing reads, worked out once per change of the record, not per request."""
        self.record = record
        standing = record.standing()
        promotions = [d for d in record.decisions if d.outcome == "promoted" and standing[d.candidate] is d]
        self.promoted = promotions[-1].candidate if promotions else None
        self.rejected = frozenset(c for c, d in standing.items() if d.outcome == "rejected")
        self.decided = frozenset(c for c, d in standing.items() if d.outcome in ("promoted", "rejected"))

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.folder / RELEASE_FILE).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _follow_file(self) -> None:
        """Re-read release.json when it changed (looked at once a second at most)."""
        now = time.monotonic()
        if now - self._checked_at < REREAD_EVERY_S:
            return
        self._checked_at = now
        if self._file_stamp() != self._file_seen:
            self.reread()

    # --- routing -------------------------------------------------------------------------------

    def route(self, serving: Sequence[str]) -> str:
        """The version an unversioned request gets, of the versions now serving (oldest first, not
        empty): the promoted one; else by the split's weights over those serving (a rejected
        candidate's weight is 0); else the newest that is neither rejected nor a candidate still
        being judged; else the newest."""
        self._follow_file()
        if self.promoted is not None and self.promoted in serving:
            return self.promoted
        split = self.traffic.split
        if split:
            weighted = [(v, w) for v, w in split.items() if v in serving and w > 0 and v not in self.rejected]
            if weighted:
                total = sum(w for _, w in weighted)
                pick = self.rng.random() * total
                for version, weight in weighted:
                    pick -= weight
                    if pick < 0:
                        return version
                return weighted[-1][0]
        shadow = self.traffic.shadow
        judged = shadow.version if shadow is not None and shadow.version not in self.decided else None
        settled = [v for v in serving if v not in self.rejected and v != judged]
        return settled[-1] if settled else serving[-1]

    def shadow_target(self, primary_version: str) -> str | None:
        """The candidate to mirror this request to, drawn at ``shadow.fraction``; None for none
        (no shadow, not drawn, the request was served by the candidate itself, or decided)."""
        shadow = self.traffic.shadow
        if shadow is None or shadow.target == primary_version or shadow.target in self.decided:
            return None
        return shadow.target if self.rng.random() < shadow.fraction else None

    # --- the canary ----------------------------------------------------------------------------

    def comparison(self, primary: str, candidate: str) -> Comparison:
        key = (primary, candidate)
        if key not in self.comparisons:
            self.comparisons[key] = Comparison(primary, candidate)
        return self.comparisons[key]

    def judge(self, comparison: Comparison) -> Decision | None:
        """Decide on the candidate once ``promote.min_compared`` images were compared: the decision
        that stands (this one, or the one another worker wrote first), or None (not enough yet, no
        promote section, decided before)."""
        promote = self.traffic.promote
        if promote is None or comparison.compared < promote.min_compared \
                or self.record.latest(comparison.candidate) is not None:
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
        return self.record_decision(decision)

    def record_decision(self, decision: Decision) -> Decision:
        """Keep the decision, unless another worker decided on the candidate first (that one
        stands), write it beside the model under a lock, and log it. A read-only repository keeps
        it in this process only, and says so in the log."""
        try:
            with _locked(self.folder):
                self.reread()
                earlier = self.record.latest(decision.candidate)
                if earlier is not None:
                    return earlier
                record = self.record.model_copy(deep=True)
                record.decisions = [*record.decisions, decision][-MAX_DECISIONS:]
                atomic_write_text(self.folder / RELEASE_FILE, record.model_dump_json(indent=2))
                self._file_seen = self._file_stamp()
                self._apply(record)
        except OSError as exc:
            log.error("model %s: cannot write %s (%s): the decision holds in this process until it restarts",
                      self.name, RELEASE_FILE, exc.strerror or exc)
            self.unsaved.append(decision)
            self.reread()
        log.warning("model %s: candidate %s %s (primary %s): %s", self.name, decision.candidate,
                    decision.outcome.upper(), decision.primary, decision.why)
        return decision

    def roles(self) -> dict[str, str]:
        """Each version's part in the release, for the repository index: its standing decision
        (promoted, rejected, passed, failed), or candidate while the shadow still judges it."""
        self._follow_file()
        roles = {candidate: d.outcome for candidate, d in self.record.standing().items() if candidate.isdigit()}
        shadow = self.traffic.shadow
        if shadow is not None and shadow.version is not None and shadow.version not in roles:
            roles[shadow.version] = "candidate"
        return roles

    def status(self, serving: Sequence[str]) -> dict[str, object]:
        """``GET /v2/models/{m}/canary``: the comparisons so far and every decision."""
        self._follow_file()
        return {
            "model": self.name,
            "serving": list(serving),
            "traffic": self.traffic.model_dump(exclude_none=True),
            "promoted": self.promoted,
            "comparisons": [c.summary() for c in self.comparisons.values()],
            "decisions": [d.model_dump() for d in self.record.decisions],
        }


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the model's release (workers of one pod, pods on one volume that
    honours flock): read, decide and write as one step."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
