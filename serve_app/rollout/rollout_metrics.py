"""Prometheus gauges of a rollout, set by the controller after every look at the evidence.

Exported through Ray's metrics endpoint like the replicas' (`ray_` prefix): the evidence
the policy judges, per version and role, so a dashboard shows exactly what the controller
saw when it decided. Tags are bounded: a few statistic names, the model's own features.

Ray exports a gauge only for a few report intervals after it was last set, so the evidence
last judged is set again on every look, also once the rollout has ended (a finished
rollout's evidence stays readable until the next rollout's replaces it).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

from serve_app.rollout.evidence import Evidence, VersionEvidence


class RolloutMetrics:
    def __init__(self, model: str, alias: str) -> None:
        self._base = {"model": model, "alias": alias}
        self._weight = Gauge(
            "nonstop_rollout_weight", description="Share of requests the candidate answers (0: shadow or none)",
            tag_keys=("model", "alias", "candidate"),
        )  # fmt: skip
        self._evidence = Gauge(
            "nonstop_rollout_evidence",
            description="Evidence over the current window: requests, error_rate, p50_ms, p99_ms, max_input_psi per "
            "version; agreement, mean_abs_diff, output_psi, compared for the candidate against the primary; with an "
            "outcome check, labelled_rows and labelled_score (accuracy, or mean squared error) per version",
            tag_keys=("model", "alias", "version", "role", "stat"),
        )
        self._drift = Gauge(
            "nonstop_rollout_input_psi", description="PSI of live inputs against the version's training profile",
            tag_keys=("model", "alias", "version", "feature"),
        )  # fmt: skip
        self._last: Evidence | None = None
        self._decisions = Counter(
            "nonstop_rollout_decisions", description="Decisions written to the ledger", tag_keys=("model", "alias", "verdict")
        )

    def observed(self, candidate: int | None, weight: float, evidence: Evidence | None) -> None:
        self._weight.set(weight, tags={**self._base, "candidate": str(candidate)})
        evidence = self._last = evidence or self._last
        if evidence is None:
            return
        for role, version in (("primary", evidence.primary), ("candidate", evidence.candidate)):
            self._version(role, version)
        paired = {
            "agreement": evidence.agreement, "mean_abs_diff": evidence.mean_abs_diff,
            "output_psi": evidence.output_psi, "compared": evidence.compared,
        }  # fmt: skip
        self._stats("candidate", evidence.candidate.version, paired)
        labelled = evidence.labelled
        for role, score in (("primary", labelled.primary), ("candidate", labelled.candidate)) if labelled else ():
            if score is not None:
                self._stats(role, score.version, {"labelled_rows": score.rows, "labelled_score": score.mean})

    def decided(self, verdict: str) -> None:
        self._decisions.inc(tags={**self._base, "verdict": verdict})

    def _version(self, role: str, version: VersionEvidence) -> None:
        drifted = version.max_drift
        self._stats(role, version.version, {
            "requests": version.requests, "error_rate": version.error_rate, "p50_ms": version.p50_ms,
            "p99_ms": version.p99_ms, "max_input_psi": drifted[1] if drifted else None,
        })  # fmt: skip
        for feature, index in version.input_drift.items():
            self._drift.set(index, tags={**self._base, "version": str(version.version), "feature": feature})

    def _stats(self, role: str, version: int, values: dict[str, float | int | None]) -> None:
        for stat, value in values.items():
            if value is not None:
                self._evidence.set(float(value), tags={**self._base, "version": str(version), "role": role, "stat": stat})
