"""Bounds on a zip archive (a skops artifact), read from its directory before any member
is inflated.

zipfile inflates a member only up to the size its directory entry declares, and fails
the CRC check if the data says otherwise, so the declared sizes bound what reading can
allocate. A few kilobytes of deflate can declare gigabytes (a 1 MB artifact once took a
loader to 2.3 GB), so their sum is checked against an absolute cap and against a ratio to
the archive's own size before skops reads a byte of any member.
"""

from __future__ import annotations

import zipfile

MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_RATIO = 100  # unpacked / packed; skops stores arrays uncompressed, so real artifacts sit near 1
RATIO_FLOOR_BYTES = 64 * 1024 * 1024  # below this, any ratio: small schemas compress well
MAX_MEMBERS = 100_000


class ArchiveTooLarge(ValueError):
    """The archive would unpack to more than its bounds allow; nothing was inflated."""


def check_unpacked_size(archive: zipfile.ZipFile, packed: int, limit: int = MAX_UNPACKED_BYTES) -> int:
    """The total the members declare, once it is known to be within the bounds."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ArchiveTooLarge(f"the archive holds {len(members)} members, over the limit of {MAX_MEMBERS}")
    total = sum(member.file_size for member in members)
    if total > limit:
        raise ArchiveTooLarge(f"the archive unpacks to {total} bytes, over the limit of {limit}")
    if total > RATIO_FLOOR_BYTES and total > MAX_RATIO * packed:
        raise ArchiveTooLarge(
            f"the archive unpacks to {total} bytes from {packed} ({total // max(packed, 1)}x, over the limit of {MAX_RATIO}x)"
        )
    return total
