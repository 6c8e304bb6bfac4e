"""The Grafana dashboard imports cleanly and queries only metrics the application exports.

What is exported is read from the code that exports it (every Counter, Gauge and Histogram
constructed in serve_app/replica/serving_metrics.py and serve_app/rollout/rollout_metrics.py), named as Ray's
Prometheus endpoint names them: a `ray_` prefix, `_total` after a counter, `_bucket`,
`_sum` and `_count` after a histogram.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "docs" / "grafana" / "nonstop-dashboard.json"
METRIC_MODULES = (ROOT / "serve_app" / "replica" / "serving_metrics.py", ROOT / "serve_app" / "rollout" / "rollout_metrics.py")
_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}


def declared_metrics() -> dict[str, str]:
    """Metric name (as Ray's endpoint exports it, without suffix) -> kind, from the source."""
    found = {}
    for module in METRIC_MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SUFFIXES
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):  # fmt: skip
                found[f"ray_{node.args[0].value}"] = node.func.id
    return found


DECLARED = declared_metrics()
EXPORTED = {f"{name}{suffix}" for name, kind in DECLARED.items() for suffix in _SUFFIXES[kind]}
# every metric has a panel, but readiness: `nonstop status` and the HTTP metadata show it
NOT_PANELLED = {"ray_nonstop_ready"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# what is not a metric name in PromQL: label matchers, ranges, strings, grouping labels, numbers
_NOT_NAMES = re.compile(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)')
_IDENTIFIER = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    return {name for name in _IDENTIFIER.findall(_NOT_NAMES.sub(" ", expr)) if name not in _KEYWORDS}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_name_extraction_sees_through_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{model=~"$model"}[1h]))) / on (model) y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_dashboard_is_a_modern_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = [
        (x, y)
        for p in dashboard["panels"]
        for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
        for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(x < 24 for x, _ in cells)


def test_every_query_goes_through_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    assert variables["model"]["datasource"] == DATASOURCE


def test_queries_use_only_exported_metrics_and_cover_them_all(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for target in _targets(dashboard):
        names = metric_names(target["expr"])
        assert names, target["expr"]
        assert names <= EXPORTED, f"{target['expr']} queries {sorted(names - EXPORTED)}"
        used |= names
    model_values = re.fullmatch(r"label_values\((\w+), model\)", dashboard["templating"]["list"][1]["definition"])
    assert model_values and model_values.group(1) in EXPORTED
    for metric in DECLARED.keys() - NOT_PANELLED:
        assert any(name.startswith(metric) for name in used), f"no panel shows {metric}"


def test_the_source_is_read_as_the_endpoint_names_it() -> None:
    assert DECLARED["ray_nonstop_predictions"] == "Counter" and "ray_nonstop_predictions_total" in EXPORTED
    assert "ray_nonstop_swap_duration_seconds_bucket" in EXPORTED and "ray_nonstop_rollout_weight" in EXPORTED
    assert {"ray_nonstop_rollout_evidence", "ray_nonstop_rollout_input_psi", "ray_nonstop_rollout_decisions"} <= DECLARED.keys()


def test_the_requested_panels_are_there(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in dashboard["panels"]}
    stacked = by_title["Predictions/s by version"]
    assert stacked["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "version" in stacked["targets"][0]["expr"]
    swap = by_title["Swap duration p50 / p95"]
    assert {t["expr"].split(",")[0] for t in swap["targets"]} == {"histogram_quantile(0.5", "histogram_quantile(0.95"}
    assert by_title["Batch size distribution"]["type"] == "heatmap"
    assert {p["type"] for p in dashboard["panels"] if "Served version" in p["title"]} == {"table", "state-timeline"}
    assert any("reason" in t["expr"] for t in by_title["Prediction errors/s by reason"]["targets"])
    assert by_title["Model load failures"]["targets"]
    share = by_title["Rollout: traffic share per version"]
    assert share["fieldConfig"]["defaults"]["unit"] == "percentunit" and "by (model, version)" in share["targets"][0]["expr"]
    evidence = " ".join(t["expr"] for title, p in by_title.items() if title.startswith("Rollout evidence") for t in p["targets"])
    for stat in ("p50_ms", "p99_ms", "error_rate", "agreement", "output_psi", "max_input_psi"):
        assert stat in evidence, stat
    assert "verdict" in by_title["Rollout decisions"]["targets"][0]["expr"]
