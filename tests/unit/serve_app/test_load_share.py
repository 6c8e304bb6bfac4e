"""Which replicas share a load: the name of a node's load board (serve_app/replica/load_share.py)."""

from __future__ import annotations

from pydantic import SecretStr

from nonstop.loading import TrustPolicy
from serve_app.replica.load_share import board_name


def test_loads_are_shared_only_within_one_app_registry_key_trust_policy_and_node() -> None:
    base = ("app", "file:///r", SecretStr("k" * 32), TrustPolicy(), "node-a")
    variants = [
        ("other-app", *base[1:]),
        (base[0], "file:///other", *base[2:]),
        (*base[:2], SecretStr("x" * 32), *base[3:]),
        (*base[:2], None, *base[3:]),
        (*base[:3], TrustPolicy(extra_types=("lightgbm.basic.Booster",)), base[4]),
        (*base[:4], "node-b"),
    ]
    names = {board_name(*v) for v in [base, *variants]}
    assert len(names) == 1 + len(variants)
    assert board_name(*base) == board_name(*base)
    assert "k" * 8 not in board_name(*base)  # the key is only ever hashed
