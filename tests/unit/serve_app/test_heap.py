"""A replica gives the memory it freed back to the system (serve_app/replica/heap.py)."""

from __future__ import annotations

import sys

import psutil
import pytest

from serve_app.replica.heap import release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_memory_freed_below_live_blocks_goes_back_to_the_system() -> None:
    """Blocks freed under one still held stay resident (free() only shrinks the heap from
    its top) until they are released."""
    process = psutil.Process()
    blocks = [bytearray(4000) for _ in range(20_000)]  # about 80 MB from malloc's heap, not Python's small-object arenas
    kept = blocks[-1]
    del blocks
    before = process.memory_info().rss
    assert release_freed_memory()
    assert before - process.memory_info().rss > 40 * 2**20
    assert len(kept) == 4000
