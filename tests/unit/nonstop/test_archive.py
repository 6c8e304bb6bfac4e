"""A zip bomb inside an artifact is refused from the archive's directory, before skops
inflates a byte of it (a 1 MB artifact once took the loader to 2.3 GB)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import psutil
import pytest

from nonstop.errors import ArtifactIntegrityError
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from tests.conftest import MODEL

PADDING = 400 * 1024 * 1024  # whitespace after the schema's JSON: still valid, 400 MB unpacked


def _bomb(artifact: bytes) -> bytes:
    """The same artifact with its schema.json padded to hundreds of MB, deflated to ~400 KB."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(artifact)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "schema.json":
                info = zipfile.ZipInfo("schema.json")
                info.compress_type = zipfile.ZIP_DEFLATED
                with target.open(info, "w", force_zip64=True) as handle:
                    handle.write(data)
                    for _ in range(PADDING // (1 << 20)):
                        handle.write(b" " * (1 << 20))
                continue
            target.writestr(member, data)
    return out.getvalue()


@pytest.mark.usefixtures("trained")
def test_an_artifact_that_unpacks_to_hundreds_of_megabytes_is_refused_unread(registry: Registry) -> None:
    version = registry.manifest(MODEL, 1).version
    folder = Path(registry.uri) / MODEL / "versions" / str(version)
    artifact = folder / "model.skops"
    bomb = _bomb(artifact.read_bytes())
    assert len(bomb) < 5 * 1024 * 1024
    artifact.write_bytes(bomb)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(bomb).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rss = psutil.Process().memory_info().rss
    with pytest.raises(ArtifactIntegrityError, match="the archive unpacks to .* over the limit of 100x"):
        load_version(registry, MODEL, version, TrustPolicy())
    assert psutil.Process().memory_info().rss - rss < 100 * 1024 * 1024
