"""The model card published beside each version: card.md, card.png and profile.json.

A reviewer deciding whether to promote a version needs two answers the manifest alone
does not give at a glance: does it score better than the version it would replace, on
the same holdout, and did its training data move away from that version's. Where that
version's served requests were captured and their outcomes arrived (docs/capture.md),
the card also says how it did live over the last LIVE_DAYS days. The card
answers both in prose a person reads and a chart they can skim; the profile stored with
it is what lets the next version answer the second question without these rows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from nonstop.capture import CaptureConfig, filesystem, root_of
from nonstop.manifest import FeatureSpec, ManifestDraft
from nonstop.outcomes import labelled
from nonstop.profile import DataProfile
from nonstop.quality import VersionQuality, live_quality
from nonstop.registry import Registry
from training.comparison import Comparison
from training.metrics import HOLDOUT_ROWS
from training.profiles import (
    MAJOR_PSI,
    MODERATE_PSI,
    PROFILE_NAME,
    ShiftReport,
    profile_frame,
    read_profile,
    shift_from,
)


CARD_NAME = "card.md"
CARD_PNG = "card.png"
TOP_SHIFTED = 10
_LEVEL_COLOURS = {"stable": "#4caf50", "moderate": "#ff9800", "major": "#e53935"}
_THIS, _PARENT = "#1f77b4", "#9e9e9e"
LIVE_DAYS = 7


@dataclass(frozen=True)
class DataSummary:
    """What the card says of the training data: its profile, its shift from the parent's,
    and how the parent did live. Computed from the rows before the fit, which may
    overwrite them in place (training/stream.py)."""

    profile: DataProfile
    shift: ShiftReport | None
    parent: int | None = None
    parent_live: list[VersionQuality] = field(default_factory=list)


def summarize(
    registry: Registry, model: str, frame: pd.DataFrame, features: Sequence[FeatureSpec], parent: int | None
) -> DataSummary:
    """The parent is the production version the candidate will be compared with, so the
    card's metrics and its shift table speak of the same version."""
    shift = None
    if parent is not None and (baseline := read_profile(registry, model, parent)) is not None:
        shift = shift_from(baseline, parent, frame, features)
    return DataSummary(profile_frame(frame, features), shift, parent, _parent_live(registry, model, parent))


def card_files(model: str, draft: ManifestDraft, comparison: Comparison, summary: DataSummary) -> dict[str, bytes]:
    """The files to publish with the version, keyed by name: its data profile and card."""
    shift = summary.shift if summary.shift and summary.shift.parent_version == comparison.production_version else None
    live = summary.parent_live if summary.parent == comparison.production_version else []
    return {
        PROFILE_NAME: summary.profile.model_dump_json(indent=2).encode(),
        CARD_NAME: _markdown(model, draft, comparison, shift, live).encode(),
        CARD_PNG: _png(model, draft.metrics, comparison, shift),
    }


def _parent_live(registry: Registry, model: str, parent: int | None) -> list[VersionQuality]:
    """The parent's live quality from the registry's captures (the default destination),
    or nothing: a card never fails a publish for lack of captures."""
    if parent is None:
        return []
    try:
        fs, path = filesystem(root_of(registry.uri, CaptureConfig()))
        found = labelled(fs, path, model, datetime.now(UTC) - timedelta(days=LIVE_DAYS))
        manifest = registry.manifest(model, parent)
        lines = live_quality(found.frame, manifest.task, classes={parent: manifest.classes}, captured=found.captured)
        return [q for q in lines if q.version == parent]
    except Exception:  # captures unreadable or absent: the card says nothing live
        return []


def _live_section(parent: int | None, live: list[VersionQuality]) -> list[str]:
    if parent is None or not any(q.labelled for q in live):
        return []
    lines = [f"## How v{parent} did live", "", f"Requests captured over the last {LIVE_DAYS} days with their outcomes (`nonstop quality`):", ""]
    lines += ["| role | captured | labelled | with probabilities | metrics |", "|---|---:|---:|---:|---|"]
    for q in live:
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in q.metrics.items()) or "no label yet"
        probabilities = "" if q.with_probabilities is None else str(q.with_probabilities)
        lines.append(f"| {q.role} | {q.captured} | {q.labelled} | {probabilities} | {metrics} |")
    missing = [f"- {q.role}: no {name}: {why}" for q in live for name, why in q.omitted.items()]
    return [*lines, "", *([*missing, ""] if missing else [])]


def _markdown(
    model: str, draft: ManifestDraft, comparison: Comparison, shift: ShiftReport | None, live: list[VersionQuality] | None = None
) -> str:
    data = draft.data
    target = (
        f"a regression of `{draft.label}`"
        if draft.task == "regression"
        else f"label `{draft.label}` with classes {', '.join(map(str, draft.classes))}"
    )
    lines = [
        f"# Model card: {model}",
        "",
        (
            f"Trained on {data.rows} rows from `{data.source}` (data sha256 `{data.sha256[:12]}…`), "
            f"{len(draft.features)} features, {target}"
            + (f", estimator `{draft.estimator}`." if draft.estimator else ".")
        ),
        "",
        _parent_line(comparison),
        "",
        *_metrics_section(draft.metrics, comparison),
        "",
        *_live_section(comparison.production_version, live or []),
        *_shift_section(comparison, shift),
        "",
        f"![holdout metrics and the most shifted features]({CARD_PNG})",
        "",
    ]
    return "\n".join(lines)


def _png(
    model: str, metrics: Mapping[str, float], comparison: Comparison, shift: ShiftReport | None
) -> bytes:
    figure = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    scores, shifted = figure.subplots(1, 2, width_ratios=[2, 3])
    _plot_metrics(scores, metrics, comparison)
    _plot_shift(shifted, comparison, shift)
    parent = comparison.production_version
    figure.suptitle(f"{model}: this version" + (f" vs parent v{parent}" if parent is not None else " (no parent)"))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- markdown ---------------------------------------------------------------------------


def _parent_line(comparison: Comparison) -> str:
    if comparison.production_version is None:
        return f"No parent version ({comparison.reason}): the metrics below stand alone."
    return f"Parent: v{comparison.production_version}, the production version this one was compared with."


def _metrics_section(metrics: Mapping[str, float], comparison: Comparison) -> list[str]:
    theirs = comparison.production_metrics
    rows = f"{metrics[HOLDOUT_ROWS]:.0f} holdout rows"
    if theirs is None:
        lines = ["## Holdout metrics", "", f"Scored on this run's {rows}.", "", "| metric | this version |", "|---|---:|"]
        return lines + [f"| {name} | {metrics[name]:.4f} |" for name in _scores(metrics)]
    lines = [
        "## Holdout metrics",
        "",
        f"Both models scored on this run's {rows}.",
        "",
        f"| metric | this version | parent v{comparison.production_version} | change |",
        "|---|---:|---:|---:|",
    ]
    for name in _scores(metrics):
        value, before = metrics[name], theirs.get(name)
        parent = "–" if before is None else f"{before:.4f}"
        change = "–" if before is None else f"{value - before:+.4f}"
        lines.append(f"| {name} | {value:.4f} | {parent} | {change} |")
    return [*lines, "", f"Verdict: {comparison.reason}."]


def _shift_section(comparison: Comparison, shift: ShiftReport | None) -> list[str]:
    if shift is None or not shift.shifts:
        return ["## Feature shift", "", f"Not computed: {_no_shift_reason(comparison, shift)}."]
    levels = [s.level for s in shift.shifts]
    lines = [
        f"## Feature shift from v{shift.parent_version}'s training data",
        "",
        (
            f"PSI of these {shift.rows} rows on the deciles or categories of v{shift.parent_version}'s {shift.parent_rows} "
            f"(< {MODERATE_PSI} stable, {MODERATE_PSI}–{MAJOR_PSI} moderate, ≥ {MAJOR_PSI} major); at these sizes "
            f"sampling noise alone gives about {shift.noise_psi:.2f}. "
            "SMD is the change of the mean in pooled standard deviations."
        ),
        f"{levels.count('major')} major, {levels.count('moderate')} moderate, {levels.count('stable')} stable.",
        "",
        "| feature | kind | PSI | SMD | mean (parent → this) | level |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in shift.shifts:
        smd = "–" if s.smd is None else f"{s.smd:+.2f}"
        means = "–" if s.mean is None else f"{s.parent_mean:.4g} → {s.mean:.4g}"
        lines.append(f"| {s.feature} | {s.kind} | {s.psi:.3f} | {smd} | {means} | {s.level} |")
    if shift.unmatched:
        lines += ["", f"No baseline in v{shift.parent_version}'s profile for: {', '.join(shift.unmatched)}."]
    return lines


def _no_shift_reason(comparison: Comparison, shift: ShiftReport | None) -> str:
    parent = comparison.production_version
    if parent is None:
        return "no parent to compare with"
    if shift is None:
        return f"v{parent} has no stored data profile"
    return f"no feature has a baseline in v{parent}'s profile"


def _scores(metrics: Mapping[str, float]) -> list[str]:
    """The scores; the holdout size is context, not a score to compare."""
    return [name for name in metrics if name != HOLDOUT_ROWS]


# --- chart ----------------------------------------------------------------------------


def _plot_metrics(axes: Axes, metrics: Mapping[str, float], comparison: Comparison) -> None:
    names = _scores(metrics)
    groups = [("this version", _THIS, [metrics[n] for n in names])]
    theirs = comparison.production_metrics
    if theirs is not None:
        groups.insert(0, (f"parent v{comparison.production_version}", _PARENT, [theirs.get(n, 0.0) for n in names]))
    width = 0.8 / len(groups)
    for i, (label, colour, values) in enumerate(groups):
        offset = (i - (len(groups) - 1) / 2) * width
        bars = axes.bar([p + offset for p in range(len(names))], values, width, color=colour, label=label)
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(range(len(names)), names)
    # most scores lie in 0-1; errors (rmse, mae, log loss) are in the label's own units
    axes.set_ylim(min(0.0, *_values(groups)) * 1.25, max(1.0, *_values(groups)) * 1.25)
    axes.set_title("Holdout metrics")
    axes.legend(loc="upper center", ncols=2, frameon=False)


def _values(groups: list[tuple[str, str, list[float]]]) -> list[float]:
    return [v for _, _, values in groups for v in values]


def _plot_shift(axes: Axes, comparison: Comparison, shift: ShiftReport | None) -> None:
    if shift is None or not shift.shifts:
        axes.axis("off")
        axes.text(0.5, 0.5, f"Feature shift not computed:\n{_no_shift_reason(comparison, shift)}",
                  ha="center", va="center", fontsize=12)
        return
    top = shift.shifts[:TOP_SHIFTED][::-1]  # barh draws bottom-up; the most shifted goes on top
    bars = axes.barh([s.feature for s in top], [s.psi for s in top], color=[_LEVEL_COLOURS[s.level] for s in top])
    axes.bar_label(bars, labels=[_shift_label(s.psi, s.smd) for s in top], fontsize=8, padding=3)
    for threshold in (MODERATE_PSI, MAJOR_PSI):
        axes.axvline(threshold, color="#555555", linestyle="--", linewidth=0.8)
    # linear below MODERATE_PSI and logarithmic above, so one runaway feature does not flatten the rest
    axes.set_xscale("symlog", linthresh=MODERATE_PSI)
    axes.set_xlim(0, max(MAJOR_PSI, top[-1].psi) * 4)
    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axes.axvline(shift.noise_psi, color="#1f77b4", linestyle=":", linewidth=1.2)
    axes.set_xlabel(
        f"PSI against v{shift.parent_version}'s training data "
        f"(dashed: {MODERATE_PSI}, {MAJOR_PSI}; dotted: sampling noise ≈ {shift.noise_psi:.2f})"
    )
    axes.set_title(f"Top {len(top)} shifted features")


def _shift_label(psi: float, smd: float | None) -> str:
    return f"{psi:.2f}" if smd is None else f"{psi:.2f} (SMD {smd:+.2f})"
