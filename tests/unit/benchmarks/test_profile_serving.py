"""benchmarks/profile_serving.py charges each sampled stack to the deepest layer it reaches.
The layers name the modules the replica runs today: a stale pattern would silently move
samples to "other" (the decoders moved to serve_app/wire once and their samples did)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.profile_serving import LAYERS, layer_of

REPO = Path(__file__).resolve().parents[3]
ROOT = "Thread.run (/usr/lib/python3.11/threading.py:982)"
ROUTE = f"predict ({REPO}/serve_app/rest/v1_routes.py:45)"


@pytest.mark.parametrize(
    ("deepest", "layer"),
    [
        (f"_listed_matrix ({REPO}/serve_app/wire/v1_json.py:183)", "decode (serve_app/wire)"),
        (f"read_body ({REPO}/serve_app/rest/body.py:40)", "read the body"),
        (f"json_response ({REPO}/serve_app/rest/common.py:33)", "encode (json.dumps, response)"),
        (f"DataPlane._answer ({REPO}/serve_app/replica/dataplane.py:307)", "nonstop data plane"),
        (f"LoadedModel.predict ({REPO}/nonstop/loading.py:92)", "predict"),
    ],
)
def test_a_sample_goes_to_the_deepest_layer_its_stack_reaches(deepest: str, layer: str) -> None:
    assert layer_of([ROOT, ROUTE, deepest]) == layer
    assert layer_of([ROOT, ROUTE]) == "nonstop routes"


def test_every_module_a_layer_names_exists() -> None:
    ours = [pattern for _, pattern in LAYERS if pattern.startswith(("serve_app/", "nonstop/"))]
    assert ours and all((REPO / pattern).exists() for pattern in ours), [p for p in ours if not (REPO / p).exists()]
