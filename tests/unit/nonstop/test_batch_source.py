"""The files a scoring job reads, listed in the driver as Ray Data would list them, and
one file read as a read task reads it (no Ray needed for either)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nonstop.batch.source import PATH, _read, listing, schema
from nonstop.errors import InvalidInput


def test_a_folder_of_partitions_lists_its_parquet_files_and_reads_the_keys_as_columns(tmp_path: Path) -> None:
    for day in ("2026-11-01", "2026-11-02"):
        (tmp_path / f"day={day}").mkdir()
        pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / f"day={day}" / "part-0.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".day=x.parquet").write_text("not parquet")
    fs, files, kind, base = listing(str(tmp_path))
    assert (kind, [Path(f).parent.name for f in files]) == ("parquet", ["day=2026-11-01", "day=2026-11-02"])
    table = _read(pa.table({PATH: [files[1]]}), fs, kind, base)
    assert table.to_pydict() == {"x": [1.0, 2.0], "day": ["2026-11-02", "2026-11-02"]}
    assert schema(str(tmp_path)).names == ["x", "day"]


def test_a_missing_or_empty_source_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        listing(str(tmp_path / "nowhere"))
    with pytest.raises(InvalidInput, match="no .parquet or .csv file under it"):
        listing(str(tmp_path))
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(InvalidInput, match="a .parquet or .csv file, or a folder of them"):
        listing(str(tmp_path / "rows.txt"))
