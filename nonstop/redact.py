"""Credentials that ride in a URI never reach a message, a log line or a manifest.

pyarrow accepts `s3://KEY:SECRET@bucket/...` and secret-bearing query parameters, and
echoes the whole URI in its own errors; the registry and data URIs are also recorded
(the manifest's data source) and printed. Everything shown goes through here first.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit

MASK = "***"
_SECRET_PARAMETER = re.compile(r"key|secret|token|password|credential|signature", re.IGNORECASE)


def _secrets(uri: str) -> list[str]:
    """User info and the values of secret-named query parameters, as written and decoded."""
    if "://" not in uri:
        return []
    parts = urlsplit(uri)
    found: list[str] = []
    if "@" in parts.netloc:
        found += [parts.netloc.rpartition("@")[0], parts.username or "", parts.password or ""]
    for name, value in parse_qsl(parts.query):
        if _SECRET_PARAMETER.search(name):
            found += [value, quote(value, safe="")]
    # longest first, so a user:password pair is masked whole before its parts
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, uri: str) -> str:
    """`text` (a message that may quote `uri`, or `uri` itself) without its credentials."""
    for secret in _secrets(uri):
        text = text.replace(secret, MASK)
    return text


def public_uri(uri: str) -> str:
    return redact(uri, uri)
