"""Model cards and data profiles, from real training runs into a real registry on disk."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from nonstop.registry import Registry
from tests.conftest import MODEL, train_into
from training import demo
from training.card import CARD_NAME, CARD_PNG
from training.data import validate
from training.profiles import PROFILE_NAME, DataProfile, profile_frame, read_profile, shift_from

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHIFT_HEADER = "| feature | kind | PSI | SMD | mean (parent → this) | level |"


def _card(registry: Registry, version: int) -> str:
    data = registry.read_extra(MODEL, version, CARD_NAME)
    assert data is not None, f"v{version} has no card"
    return data.decode()


def _assert_readable_png(data: bytes | None) -> None:
    assert data is not None and data.startswith(PNG_SIGNATURE)
    pixels = image.imread(io.BytesIO(data), format="png")
    height, width = pixels.shape[:2]
    assert height >= 300 and width >= 600
    assert float(np.std(pixels)) > 0.05  # drawn on, not a blank canvas


def _shift_rows(card: str) -> list[list[str]]:
    """The shift table's rows as cells, most shifted first."""
    lines = card.splitlines()
    start = lines.index(SHIFT_HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.usefixtures("trained")
def test_first_and_second_versions_get_cards(registry: Registry, demo_data: Path) -> None:
    second = train_into(registry, demo_data)
    assert second.manifest.parent_version == 1

    first_card = _card(registry, 1)
    assert first_card.startswith(f"# Model card: {MODEL}")
    assert "No parent version" in first_card
    assert "| metric | this version |" in first_card.splitlines()  # no parent column
    assert "Feature shift" in first_card and "no parent to compare with" in first_card

    second_card = _card(registry, 2)
    assert "Parent: v1" in second_card
    assert "| metric | this version | parent v1 | change |" in second_card
    accuracy = next(line for line in second_card.splitlines() if line.startswith("| accuracy |"))
    assert accuracy.count("|") == 5  # this version, parent, change
    assert "Feature shift from v1's training data" in second_card
    rows = _shift_rows(second_card)
    assert sorted(r[0] for r in rows) == sorted(second.manifest.feature_names)
    assert all(r[-1] == "stable" for r in rows)  # the same data as v1: nothing moved

    for version in (1, 2):
        _assert_readable_png(registry.read_extra(MODEL, version, CARD_PNG))
        profile = DataProfile.model_validate_json(registry.read_extra(MODEL, version, PROFILE_NAME) or b"")
        assert set(profile.features) == set(second.manifest.feature_names)


@pytest.mark.usefixtures("trained")
def test_a_shifted_column_shifts_more_than_unshifted_data(registry: Registry, tmp_path: Path) -> None:
    parent = registry.manifest(MODEL, 1)
    baseline = read_profile(registry, MODEL, parent.version)
    assert baseline is not None
    unshifted = demo.day_frame(4)
    shifted = unshifted.assign(mean_radius=unshifted["mean_radius"] * 3)

    calm = shift_from(baseline, parent.version, unshifted, parent.features)
    moved = shift_from(baseline, parent.version, shifted, parent.features)
    calm_radius = next(s for s in calm.shifts if s.feature == "mean_radius")
    moved_radius = next(s for s in moved.shifts if s.feature == "mean_radius")
    assert moved_radius.psi > calm_radius.psi
    assert abs(moved_radius.smd or 0.0) > abs(calm_radius.smd or 0.0)
    assert moved.shifts[0].feature == "mean_radius"

    # the same ordering reaches the published card: candidates left unpromoted keep v1 as parent
    train_into(registry, _write(unshifted, tmp_path / "calm.parquet"), promote=False)
    train_into(registry, _write(shifted, tmp_path / "moved.parquet"), promote=False)
    calm_rows, moved_rows = _shift_rows(_card(registry, 2)), _shift_rows(_card(registry, 3))
    assert moved_rows[0][0] == "mean_radius" and moved_rows[0][-1] == "major"
    psi = {name: {r[0]: float(r[2]) for r in rows} for name, rows in (("calm", calm_rows), ("moved", moved_rows))}
    assert psi["moved"]["mean_radius"] > psi["calm"]["mean_radius"]


def test_categorical_features_are_profiled_by_frequency() -> None:
    rng = np.random.default_rng(0)
    base = demo.day_frame(0).assign(site=rng.choice(["north", "south", "east"], size=demo.ROWS_PER_DAY))
    features = validate(base, "target", min_rows=10)
    assert next(f for f in features if f.name == "site").kind == "category"
    profile = profile_frame(base, features)

    same_mix = demo.day_frame(1).assign(site=rng.choice(["north", "south", "east"], size=demo.ROWS_PER_DAY))
    new_mix = same_mix.assign(site=rng.choice(["west", "south"], size=demo.ROWS_PER_DAY, p=[0.8, 0.2]))
    calm = next(s for s in shift_from(profile, 1, same_mix, features).shifts if s.feature == "site")
    moved = next(s for s in shift_from(profile, 1, new_mix, features).shifts if s.feature == "site")
    assert calm.smd is None and moved.smd is None
    assert moved.psi > calm.psi


@pytest.mark.usefixtures("trained")
def test_a_parent_without_a_profile_still_gets_a_card(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    # a version published before profiles existed
    (tmp_path / "registry" / MODEL / "versions" / "1" / PROFILE_NAME).unlink()
    train_into(registry, demo_data)
    card = _card(registry, 2)
    assert "| metric | this version | parent v1 | change |" in card
    assert "v1 has no stored data profile" in card
    _assert_readable_png(registry.read_extra(MODEL, 2, CARD_PNG))


@pytest.mark.usefixtures("trained")
def test_models_show_prints_the_card(registry: Registry, demo_data: Path) -> None:
    train_into(registry, demo_data)
    command = [sys.executable, "-m", "nonstop_ops", "models", "--show", "2", "--model", MODEL, "--registry", registry.uri]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"# Model card: {MODEL}")
    assert "| metric | this version | parent v1 | change |" in done.stdout
    assert SHIFT_HEADER in done.stdout
    chart = done.stdout.strip().splitlines()[-1].removeprefix("chart: ")
    assert chart.endswith(f"/versions/2/{CARD_PNG}") and Path(chart).is_file()


@pytest.mark.usefixtures("trained")
def test_the_card_says_how_the_version_it_replaces_did_live(registry: Registry, demo_data: Path) -> None:
    """v1's captured requests and their outcomes (as replicas and the outcomes route write
    them) give v2's card a live row, with the accuracy computed from the same rows, the
    log loss from the four that carry probabilities, and why it has no ROC AUC."""
    from datetime import UTC, datetime

    from sklearn.metrics import log_loss

    from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
    from nonstop.outcomes import Outcome, check, store

    manifest = registry.manifest(MODEL, 1)
    fs, root = filesystem(root_of(registry.uri, CaptureConfig()))
    probabilities = [[0.6, 0.4] if i % 2 == 0 else [0.2, 0.8] for i in range(4)]
    served = [
        Served(f"r{i}", datetime.now(UTC), MODEL, 1, "primary", manifest.features, np.zeros((1, len(manifest.features))), [i % 2],
               [probabilities[i]] if i < 4 else None)
        for i in range(10)
    ]  # fmt: skip
    write_records(fs, root, records_table(served))
    store(fs, root, MODEL, check([Outcome(request_id=f"r{i}", label=1) for i in range(8)], manifest))  # right on r1, r3, r5, r7
    train_into(registry, demo_data)
    card = _card(registry, 2).splitlines()
    assert "## How v1 did live" in card
    loss = log_loss([1] * 4, probabilities, labels=manifest.classes)
    assert f"| primary | 10 | 8 | 4 | accuracy 0.5000, f1_macro 0.3333, log_loss {loss:.4f} |" in card
    assert "- primary: no roc_auc: only one class (1) among the labels: ROC AUC needs two" in card
    assert "did live" not in _card(registry, 1)  # no parent, nothing live to say
