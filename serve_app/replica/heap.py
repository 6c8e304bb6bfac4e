"""Memory a replica has freed, given back to the operating system.

glibc's malloc keeps what a process frees in its arenas for reuse, and a replica's many
threads (Ray's, the event loop's, its workers') each fill arenas of their own. A replica
that loads and evicts models all day, or swaps versions, keeps the pages its released
versions held: its resident memory grows past what it holds, and a memory budget
(serve_app/replica/models.py) would bound the models but not the process.
`malloc_trim(0)` returns the free pages. It walks the heap (milliseconds), so the
replica calls it off the event loop, after a heartbeat in which versions were released.
Where the C library has no `malloc_trim` (not glibc), nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the C library the process already runs on
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """True when the C library gave memory back; False when it had none to give or cannot."""
    return _TRIM is not None and bool(_TRIM(0))
