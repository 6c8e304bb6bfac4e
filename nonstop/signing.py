"""HMAC-SHA256 over the exact manifest bytes, with a key shared by training and serving.

The manifest carries the artifact's sha256, so a valid signature vouches for the artifact
too. Aliases carry their own signature (over the model name and the record), so that
whoever can write files cannot point `production` at a version of their choosing either. Without a key, anyone who can write to the registry can rewrite a manifest (digest,
samples and all) and the loader cannot tell; the skops trust list still stops code
execution, but not a substituted model. The key itself lives only in `Settings`: it is
never written next to what it signs, logged, or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

SIGNATURE_NAME = "manifest.sig"
_SCHEME = b"hmac-sha256:"


def sign(key: SecretStr, data: bytes) -> bytes:
    """The signature file's content; the scheme prefix leaves room for another algorithm."""
    mac = hmac.new(key.get_secret_value().encode(), data, hashlib.sha256).hexdigest()
    return _SCHEME + mac.encode()


def is_valid(key: SecretStr, data: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(key, data), signature.strip())
