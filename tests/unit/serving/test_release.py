"""A model's release without a server: version policies, the split's routing, the canary's
decision and its record beside the model."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from resserve.config import ModelConfig, TrafficConfig, VersionPolicy
from resserve.server.shadow import compare_scores
from resserve.serving.release import RELEASE_FILE, Comparison, Release, read_release, wilson_interval


def test_version_policies_choose_among_the_built_versions() -> None:
    built = ["1", "2", "3", "10"]
    assert VersionPolicy().choose(built) == ["10"]
    assert VersionPolicy(latest=2).choose(built) == ["3", "10"]
    assert VersionPolicy(latest=9).choose(built) == built
    assert VersionPolicy(all=True).choose(built) == built
    assert VersionPolicy(specific=[1, 3, 7]).choose(built) == ["1", "3"]
    assert VersionPolicy(specific=[7]).choose(built) == []
    with pytest.raises(ValidationError, match="one of"):
        VersionPolicy(latest=1, all=True)
    with pytest.raises(ValidationError):
        VersionPolicy(latest=0)


def test_traffic_settings_are_checked_where_they_are_read() -> None:
    with pytest.raises(ValidationError, match="version numbers to weights"):
        TrafficConfig(split={"one": 90})
    with pytest.raises(ValidationError, match="version numbers to weights"):
        TrafficConfig(split={"1": 0})
    with pytest.raises(ValidationError, match="shadow.target"):
        TrafficConfig.model_validate({"shadow": {"target": "v2", "fraction": 0.5}})
    with pytest.raises(ValidationError, match="give traffic.shadow too"):
        TrafficConfig.model_validate({"promote": {}})
    with pytest.raises(ValidationError, match="action: report"):
        TrafficConfig.model_validate({"shadow": {"target": "model:other", "fraction": 0.5}, "promote": {}})
    ok = TrafficConfig.model_validate({"shadow": {"target": "model:other", "fraction": 0.5},
                                       "promote": {"action": "report"}})
    assert ok.shadow is not None and ok.shadow.model == "other" and ok.shadow.version is None
    assert TrafficConfig(split={"01": 5}).split == {"1": 5}


def test_release_settings_are_not_build_inputs() -> None:
    """Changing only version_policy or traffic rebuilds nothing: neither is in the build's hash."""
    base = {"name": "m", "source": {"onnx": "m.onnx"}}
    plain = ModelConfig.model_validate(base)
    released = ModelConfig.model_validate({**base, "version_policy": {"all": True},
                                           "traffic": {"split": {"1": 1, "2": 1}}})
    assert plain.build_spec("onnxruntime") == released.build_spec("onnxruntime")


def test_the_split_routes_by_weight_over_the_versions_that_serve(tmp_path: Path) -> None:
    release = Release("m", tmp_path, TrafficConfig(split={"1": 75, "2": 25, "3": 10}), rng=random.Random(7))
    picks = [release.route(["1", "2"]) for _ in range(4000)]  # version 3 is not serving: its weight sits out
    assert 0.70 < picks.count("1") / 4000 < 0.80 and set(picks) == {"1", "2"}
    assert release.route(["4"]) == "4"  # nothing the split names serves: the newest
    assert Release("m", tmp_path, TrafficConfig()).route(["1", "2"]) == "2"


def comparison_of(agree: int, total: int, primary_s: float = 0.01, candidate_s: float = 0.01) -> Comparison:
    comparison = Comparison("1", "2")
    top1 = np.array([True] * agree + [False] * (total - agree))
    comparison.add(top1, np.full(total, 5), np.zeros(total), primary_s, candidate_s)
    return comparison


def test_the_canary_promotes_an_agreeing_candidate_and_the_record_outlives_the_process(tmp_path: Path) -> None:
    traffic = TrafficConfig.model_validate({"split": {"1": 90, "2": 10}, "shadow": {"target": "2", "fraction": 0.5},
                                            "promote": {"min_compared": 100, "min_top1_agreement": 0.99}})
    release = Release("m", tmp_path, traffic)
    assert release.judge(comparison_of(99, 99)) is None  # not enough compared yet
    decision = release.judge(comparison_of(199, 200))
    assert decision is not None and decision.outcome == "promoted" and "0.9950 >= 0.99" in decision.why
    assert release.route(["1", "2"]) == "2" and release.shadow_target("1") is None  # decided: no more shadows
    again = Release("m", tmp_path, traffic)  # a restart, or another worker
    assert again.promoted == "2" and again.route(["1", "2"]) == "2"
    assert again.judge(comparison_of(200, 200)) is None  # decided once
    assert again.route(["1"]) == "1"  # the promoted version no longer serves: what does


def test_the_canary_rejects_on_agreement_or_latency_and_takes_the_split_share_back(tmp_path: Path) -> None:
    traffic = TrafficConfig.model_validate({"split": {"1": 50, "2": 50}, "shadow": {"target": "2", "fraction": 1.0},
                                            "promote": {"min_compared": 10, "max_p99_ratio": 1.25}})
    release = Release("m", tmp_path, traffic)
    decision = release.judge(comparison_of(8, 10))
    assert decision is not None and decision.outcome == "rejected" and "0.8000 < 0.99" in decision.why
    assert {release.route(["1", "2"]) for _ in range(200)} == {"1"}  # the rollback
    slow = Release("m", tmp_path / "slow", traffic)
    (tmp_path / "slow").mkdir()
    decision = slow.judge(comparison_of(10, 10, primary_s=0.01, candidate_s=0.02))
    assert decision is not None and decision.outcome == "rejected" and "p99 ratio 2.00 > 1.25" in decision.why


def test_report_only_never_changes_routing(tmp_path: Path) -> None:
    traffic = TrafficConfig.model_validate({"shadow": {"target": "2", "fraction": 1.0},
                                            "promote": {"min_compared": 10, "action": "report"}})
    release = Release("m", tmp_path, traffic)
    decision = release.judge(comparison_of(10, 10))
    assert decision is not None and decision.outcome == "passed"
    assert release.route(["1", "2"]) == "1" and release.promoted is None  # 2 is still judged: 1 answers
    assert json.loads((tmp_path / RELEASE_FILE).read_text())["decisions"][0]["outcome"] == "passed"


def test_a_release_file_that_is_not_one_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing in a hostile repository makes the server block, read without end or parse a lot."""
    path = tmp_path / RELEASE_FILE
    path.write_text('{"decisions": [{"candidate": 2}]}')
    assert read_release(tmp_path).decisions == []
    path.write_bytes(b"x" * (2 * 1024 * 1024))
    assert read_release(tmp_path).decisions == []
    path.unlink()
    path.symlink_to("/dev/zero")  # size 0 to stat, endless to read
    assert read_release(tmp_path).decisions == []
    path.unlink()
    os.mkfifo(path)  # opening it for reading would wait for a writer for ever
    assert read_release(tmp_path).decisions == []
    assert caplog.text.count("not a release record") == 4


def test_the_newest_version_answers_unless_it_is_being_judged_or_was_rejected(tmp_path: Path) -> None:
    """latest: 2 with the newest as shadow target and no split: the candidate gets no unversioned
    request until it is promoted; a rejected newest version gets none either."""
    traffic = TrafficConfig.model_validate({"shadow": {"target": "2", "fraction": 1.0},
                                            "promote": {"min_compared": 10}})
    release = Release("m", tmp_path, traffic)
    assert release.route(["1", "2"]) == "1" and release.shadow_target("1") == "2"
    assert release.judge(comparison_of(10, 10)) is not None
    assert release.route(["1", "2"]) == "2"  # promoted
    rejected = Release("m", tmp_path / "r", traffic)
    (tmp_path / "r").mkdir()
    rejected.judge(comparison_of(1, 10))
    assert rejected.route(["1", "2"]) == "1" and rejected.route(["2"]) == "2"  # nothing else serves: it answers


def test_two_workers_decide_once_and_follow_each_other(tmp_path: Path) -> None:
    traffic = TrafficConfig.model_validate({"shadow": {"target": "2", "fraction": 1.0},
                                            "promote": {"min_compared": 10}})
    first, second = Release("m", tmp_path, traffic), Release("m", tmp_path, traffic)
    assert first.judge(comparison_of(10, 10)).outcome == "promoted"  # type: ignore[union-attr]
    # The second worker saw other images and would reject; the first decision stands.
    standing = second.judge(comparison_of(2, 10))
    assert standing is not None and standing.outcome == "promoted"
    assert len(read_release(tmp_path).decisions) == 1 and second.promoted == "2"
    third = Release("m", tmp_path, TrafficConfig(split={"1": 1}))
    assert third.route(["1", "2"]) == "2"  # followed from the file


def test_a_read_only_repository_keeps_the_decision_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traffic = TrafficConfig.model_validate({"split": {"1": 50, "2": 50}, "shadow": {"target": "2", "fraction": 1.0},
                                            "promote": {"min_compared": 10}})
    (tmp_path / RELEASE_FILE).mkdir()  # cannot be replaced by a file: every write fails, as on a read-only volume
    release = Release("m", tmp_path, traffic)
    assert release.judge(comparison_of(1, 10)).outcome == "rejected"  # type: ignore[union-attr]
    release.reread()  # a poll: the file has nothing, the decision holds
    assert "2" in release.rejected and {release.route(["1", "2"]) for _ in range(50)} == {"1"}
    assert "cannot write release.json" in caplog.text


def test_wilson_interval_and_the_comparison_of_scores() -> None:
    low, high = wilson_interval(990, 1000)
    assert low == pytest.approx(0.9817, abs=1e-3) and high == pytest.approx(0.9946, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    primary = np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0], [0.1, 0.6, 0.1, 0.1, 0.05, 0.05, 0.0]])
    candidate = np.array([[0.4, 0.3, 0.1, 0.1, 0.0, 0.05, 0.05], [0.6, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0]])
    top1, overlap, l1 = compare_scores(primary, candidate)
    assert top1.tolist() == [True, False]
    assert overlap.tolist()[1] == 5 and overlap.tolist()[0] in (4, 5)  # ties at 0.05 choose either
    np.testing.assert_allclose(l1, [0.3, 1.0])
