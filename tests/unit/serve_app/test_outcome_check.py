"""The rollout policy's outcome check, pure: the two-sample tests against scipy's own, and
what `decide` does with labelled evidence (judge, wait, time out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nonstop.labelled_score import LabelledScore
from nonstop.quality import labelled_scores
from serve_app.rollout.evidence import Evidence, VersionEvidence
from serve_app.rollout.outcome_check import LabelledEvidence, OutcomeCheck, compare
from serve_app.rollout.policy import Policy, decide

CHECK = OutcomeCheck(min_labelled=100, wait_s=300, on_timeout="rollback")
POLICY = Policy(window_s=60, min_requests=1, min_compared=1, min_error_sample=10_000, outcomes=CHECK)


def _frame(version: int, predictions: np.ndarray, labels: np.ndarray, role: str = "primary") -> pd.DataFrame:
    return pd.DataFrame(
        {"request_id": [f"{version}-{i}" for i in range(len(labels))], "row": 0, "version": version, "role": role,
         "prediction": predictions, "label": labels}  # fmt: skip
    )


def _accuracy(version: int, rows: int, right: int) -> LabelledScore:
    labels = np.ones(rows, dtype=int)
    predictions = np.r_[np.ones(right, dtype=int), np.zeros(rows - right, dtype=int)]
    return labelled_scores(_frame(version, predictions, labels), "classification", [version])[version]


def test_accuracy_is_judged_by_the_two_proportion_z_test() -> None:
    primary, candidate = _accuracy(1, 400, 372), _accuracy(2, 300, 255)  # 93% against 85%
    pooled = (372 + 255) / 700
    z = (255 / 300 - 372 / 400) / np.sqrt(pooled * (1 - pooled) * (1 / 400 + 1 / 300))
    found = compare(CHECK, primary, candidate)
    assert found.statistic == pytest.approx(z) and found.p_value == pytest.approx(stats.norm.cdf(z)) and found.worse
    assert not compare(CHECK, primary, _accuracy(2, 300, 276)).worse  # 92%: within what chance gives
    assert not compare(CHECK.model_copy(update={"margin": 0.1}), primary, candidate).worse  # 8 points < the margin
    assert not compare(CHECK, primary, _accuracy(2, 300, 300)).worse  # better is never worse


def test_squared_errors_are_judged_by_welchs_t_test() -> None:
    rng = np.random.default_rng(3)
    truth_p, truth_c = rng.normal(size=250), rng.normal(size=180)
    predicted_p, predicted_c = truth_p + rng.normal(0, 0.5, 250), truth_c + rng.normal(0, 0.7, 180)
    frame = pd.concat([_frame(1, predicted_p, truth_p), _frame(2, predicted_c, truth_c)], ignore_index=True)
    scores = labelled_scores(frame, "regression", [1, 2])
    assert scores[1].mean == pytest.approx(np.mean((predicted_p - truth_p) ** 2))
    found = compare(CHECK, scores[1], scores[2])
    expected = stats.ttest_ind((predicted_p - truth_p) ** 2, (predicted_c - truth_c) ** 2, equal_var=False, alternative="less")
    assert found.statistic == pytest.approx(expected.statistic) and found.p_value == pytest.approx(expected.pvalue)
    assert found.worse
    assert not compare(CHECK, scores[2], scores[1]).worse


def test_labelled_rows_count_each_request_row_once_whoever_heard_it() -> None:
    answered = _frame(2, np.array([1, 0]), np.array([1, 1]), role="candidate")
    shadow = _frame(2, np.array([1, 0]), np.array([1, 1]), role="shadow")
    unlabelled = _frame(2, np.array([1]), np.array([None]), role="candidate").assign(request_id="x")
    scores = labelled_scores(pd.concat([answered, shadow, unlabelled]), "classification", [1, 2])
    assert list(scores) == [2] and (scores[2].rows, scores[2].mean) == (2, 0.5)


def _evidence(labelled: LabelledEvidence | None) -> Evidence:
    def version(v: int) -> VersionEvidence:
        return VersionEvidence(
            version=v, requests=500, errors=0, error_rate=0.0, p50_ms=1.0, p99_ms=2.0, input_rows=0, input_drift={}
        )

    return Evidence(
        primary=version(1), candidate=version(2), compared=500, agreement=0.99, mean_abs_diff=None, output_psi=0.0, labelled=labelled
    )


def test_decide_rolls_back_a_worse_candidate_at_once_and_advances_a_good_one() -> None:
    worse = _evidence(LabelledEvidence(primary=_accuracy(1, 400, 372), candidate=_accuracy(2, 300, 255)))
    decision = decide(POLICY, worse, window_done=False)
    assert decision.verdict == "rollback" and "labelled accuracy 0.85 (n=300)" in decision.reason and "z=" in decision.reason
    good = _evidence(LabelledEvidence(primary=_accuracy(1, 400, 372), candidate=_accuracy(2, 300, 283)))
    assert decide(POLICY, good, window_done=False).verdict == "hold"  # the window first
    assert decide(POLICY, good, window_done=True, step_age_s=60).verdict == "advance"
    assert decide(POLICY.model_copy(update={"outcomes": None}), worse, window_done=True).verdict == "advance"  # not checked


def test_a_step_holds_for_labels_then_takes_the_configured_decision() -> None:
    few = _evidence(LabelledEvidence(primary=_accuracy(1, 400, 372), candidate=_accuracy(2, 40, 20)))
    waiting = decide(POLICY, few, window_done=True, step_age_s=60 + 299)
    assert waiting.verdict == "hold" and "waiting for labelled rows: candidate 40 (need 100 each)" in waiting.reason
    assert decide(POLICY, _evidence(None), window_done=True, step_age_s=61).verdict == "hold"  # none read yet
    late = decide(POLICY, few, window_done=True, step_age_s=60 + 300)
    assert late.verdict == "rollback" and "did not arrive within 300 s" in late.reason
    advancing = POLICY.model_copy(update={"outcomes": CHECK.model_copy(update={"on_timeout": "advance"})})
    assert decide(advancing, few, window_done=True, step_age_s=360).verdict == "advance"


def test_the_check_is_configured_from_a_canary_block() -> None:
    from serve_app.rollout.policy import CanaryConfig

    block = CanaryConfig.model_validate({"version": 2, "outcomes": {"min_labelled": 50, "on_timeout": "advance"}})
    assert block.policy().outcomes == OutcomeCheck(min_labelled=50, on_timeout="advance")
    with pytest.raises(ValueError, match="on_timeout"):
        CanaryConfig.model_validate({"version": 2, "outcomes": {"on_timeout": "promote"}})
    with pytest.raises(ValueError, match="extra"):
        OutcomeCheck.model_validate({"min_rows": 5})
