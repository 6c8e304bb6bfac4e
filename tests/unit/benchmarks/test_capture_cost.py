"""The pure parts of benchmarks/capture_cost.py: its schedule, the cost it reports, the
Serve config each setting deploys and the report it writes. No timing is checked here:
the figures are the benchmark's to report, not a test's to hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.capture_cost import destination, with_capture
from benchmarks.capture_cost_report import FULL, LEVELS, OFF, SETTINGS, UNWRITABLE, cost_pct, medians, report, schedule, verdict
from nonstop.capture import CaptureConfig
from nonstop_ops.cluster.serve_config import check_user_config, deployment_config, load_serve_config, replica_bounds


def test_every_setting_meets_every_level_each_round_in_alternating_orders() -> None:
    phases = schedule(2)
    names = ["off", "1%", "100%", "100%, unwritable"]
    assert [(r, s.name) for r, s, _ in phases] == [(0, n) for n in names] + [(1, n) for n in reversed(names)]
    assert [levels for _, _, levels in phases] == [(16, 64), (64, 16)] * 4
    runs = {(s.name, c) for _, s, levels in phases for c in levels}
    assert runs == {(s.name, c) for s in SETTINGS for c in LEVELS}


def test_cost_is_the_share_of_capture_off_throughput_lost() -> None:
    assert cost_pct(1000.0, 980.0) == pytest.approx(2.0)
    assert cost_pct(1000.0, 1010.0) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no baseline"):
        cost_pct(0.0, 5.0)
    assert verdict(SETTINGS[1], 2.0).endswith("met") and verdict(SETTINGS[1], 2.01).endswith("NOT met")
    assert verdict(OFF, 50.0) == ""


def test_medians_are_taken_over_rounds_figure_by_figure() -> None:
    runs = [
        {"clients": 16, "rps": 100.0, "p50_ms": 1.0, "p99_ms": 9.0, "errors": 0},
        {"clients": 16, "rps": 300.0, "p50_ms": 3.0, "p99_ms": 5.0, "errors": 2},
        {"clients": 64, "rps": 999.0, "p50_ms": 9.0, "p99_ms": 99.0, "errors": 0},
    ]
    assert medians(runs, 16) == {"rps": 200.0, "p50_ms": 2.0, "p99_ms": 7.0, "errors": 1.0}


def test_each_setting_deploys_the_shipped_config_with_its_capture_and_the_replicas_at_the_floor(tmp_path: Path) -> None:
    shipped = load_serve_config()
    for setting in SETTINGS:
        config = with_capture(shipped, setting, destination(tmp_path, setting))
        check_user_config(config)
        capture = CaptureConfig.model_validate(deployment_config(config)["user_config"]["capture"])
        assert (capture.enabled, capture.sample_rate) == (setting.enabled, setting.sample_rate)
        assert (capture.destination is None) == (not setting.enabled)
        assert replica_bounds(config) == (replica_bounds(shipped)[0],) * 2
    assert deployment_config(shipped)["user_config"]["capture"].get("destination") is None  # the shipped one untouched


def _results() -> dict[str, Any]:
    def runs(rps: float, p99: float, cpu_us: float | None = 200.0) -> list[dict[str, Any]]:
        return [{"clients": c, "rps": rps * c / 16, "p50_ms": 1.0, "p99_ms": p99, "errors": 0, "load_1m": 3.0,
                 "replica_cpu_us": cpu_us} for c in LEVELS]  # fmt: skip

    return {
        "machine": "x86_64, 2 cores", "ray": "2.60.0", "date": "2026-12-05 13:00 UTC", "command": "python -m benchmarks.capture_cost",
        "seconds": 10.0, "rounds": 1, "replicas": 2, "client": "wrk", "load_start": 2.0, "load_end": 4.0,
        "settings": {
            "off": {"runs": runs(1000.0, 10.0), "answered": 30_000, "written": 0, "written_by_replicas": 0, "dropped": 0},
            "1%": {"runs": runs(990.0, 10.0, 203.0), "answered": 30_000, "written": 301, "written_by_replicas": 301, "dropped": 0},
            FULL.name: {"runs": runs(850.0, 20.0, 230.0), "answered": 25_000, "written": 25_000, "written_by_replicas": 25_000, "dropped": 0},
            UNWRITABLE.name: {"runs": runs(995.0, 10.0, None), "answered": 29_000, "written": 0, "written_by_replicas": 0, "dropped": 29_000},
        },
        "replay": {"rows": 25_000, "candidate": 1, "rejected": 0, "agreement": 1.0, "seconds": 5.0, "rows_per_s": 5000.0,
                   "read_seconds": 0.5},
        "in_process": {"predict_rows_per_s": 1e6, "predict_seconds": 0.025, "pipeline_rows_per_s": 2e5, "pipeline_seconds": 0.125},
    }  # fmt: skip


def test_the_report_states_each_cost_against_its_goal() -> None:
    text = report(_results())
    assert text.startswith("# ") and "taken 2026-12-05 13:00 UTC with `python -m benchmarks.capture_cost`" in text
    assert "load average 2.0 at the start, 3.0-3.0 before the runs, 4.0 at the end" in text
    assert "| off | 16 | 1,000 |  | 1.00 | 10.00 |  | 0 |  | 200 | | |" in text
    assert "| 1% | 16 | 990 | +1.0 % | 1.00 | 10.00 | ×1.00 | 0 | ≤ 2 %: met | 203 | +1.5 % | ≤ 2 %: met |" in text
    assert "| 100% | 64 | 3,400 | +15.0 % | 1.00 | 20.00 | ×2.00 | 0 | ≤ 10 %: NOT met | 230 | +15.0 % | ≤ 10 %: NOT met |" in text
    assert "| 100%, unwritable | 64 | 3,980 | +0.5 % | 1.00 | 10.00 | ×1.00 | 0 | ≤ 10 %: met | n/a | | |" in text  # a run unsampled
    assert "capture off: 16 clients 1,000-1,000 req/s and 200-200 CPU µs per request;" in text
    assert "| 1% | 30,000 | 301 | 1.00% | 301 | 0 |" in text
    assert "| 100%, unwritable | 16 | 995 | +0.5 % | 1.00 | 10.00 | ×1.00 | 0 | ≤ 10 %: met |" in text
    assert "| 100%, unwritable | 29,000 | 0 | 0.00% | 0 | 29,000 |" in text
    assert "| `nonstop replay` (library call), end to end: read, score on Ray, write, compare, ledger entry | 5,000 | 0.5% | 5.00 |" in text
