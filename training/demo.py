"""Demo data: scikit-learn's bundled breast-cancer set, cut into daily partitions.

Each day is a bootstrap sample of the bundled rows with a little noise and a slow drift,
so "tomorrow's data" can be produced for ever, offline, and deterministically per day.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

FIRST_DAY = date(2026, 11, 1)
ROWS_PER_DAY = 120
_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")


def base_frame() -> pd.DataFrame:
    bundle = load_breast_cancer(as_frame=True)
    frame = bundle.frame.copy()
    frame.columns = [re.sub(r"\W+", "_", str(c)).strip("_") for c in frame.columns]
    return frame


def day_frame(day_index: int, rows: int = ROWS_PER_DAY) -> pd.DataFrame:
    base = base_frame()
    rng = np.random.default_rng(day_index)
    picked = base.sample(n=rows, replace=True, random_state=day_index).reset_index(drop=True)
    features = [c for c in base.columns if c != "target"]
    scale = base[features].std().to_numpy()
    noise = rng.normal(0.0, 0.02, size=(rows, len(features))) * scale
    drift = 0.01 * day_index * scale
    picked[features] = (picked[features].to_numpy() + noise + drift).clip(min=0.0)
    return picked


def existing_days(folder: Path) -> list[date]:
    if not folder.is_dir():
        return []
    found = [_DAY_DIR.match(p.name) for p in folder.iterdir()]
    return sorted(date.fromisoformat(m.group(1)) for m in found if m)


def write_day(folder: Path, day: date) -> Path:
    path = folder / f"day={day.isoformat()}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    day_frame((day - FIRST_DAY).days).to_parquet(path, index=False)
    return path


def write_days(folder: Path, days: int) -> list[Path]:
    return [write_day(folder, FIRST_DAY + timedelta(days=i)) for i in range(days)]


def write_next_day(folder: Path) -> Path:
    days = existing_days(folder)
    return write_day(folder, days[-1] + timedelta(days=1) if days else FIRST_DAY)
