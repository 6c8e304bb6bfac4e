"""Credentials written into registry or data URIs stay out of messages and records."""

from __future__ import annotations

import pytest

from nonstop.errors import RegistryError
from nonstop.redact import public_uri
from nonstop.registry import Registry


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://AKIAEXAMPLE:wJalr%2FSECRET@bucket/models?scheme=http", "s3://***@bucket/models?scheme=http"),
        ("s3://bucket/m?endpoint_override=127.0.0.1:9000&session_token=TOKEN%2B1", "s3://bucket/m?endpoint_override=127.0.0.1:9000&session_token=***"),
        ("gs://bucket/models", "gs://bucket/models"),
        ("/srv/registry", "/srv/registry"),
    ],
)
def test_a_uri_is_shown_without_its_credentials(uri: str, shown: str) -> None:
    assert public_uri(uri) == shown


def test_a_registry_that_cannot_open_says_why_without_the_secret() -> None:
    """pyarrow's own message quotes the URI whole; the registry's must not."""
    with pytest.raises(RegistryError, match="Unexpected query parameter") as refused:
        Registry("s3://AKIAEXAMPLE:wJalrSECRET@bucket/models?bogus=1")
    assert "wJalrSECRET" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
