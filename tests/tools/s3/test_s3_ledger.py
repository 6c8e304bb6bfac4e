"""The promotion ledger on S3-compatible storage (moto on 127.0.0.1), as pods use it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from nonstop.ledger import EntryDraft
from nonstop.registry import PRODUCTION, Registry
from tests.tools.s3.test_s3_registry import BUCKET, prefix, s3, s3_endpoint, s3_registry  # noqa: F401  (fixtures)
from tests.unit.nonstop.test_registry import DRAFT


def test_ledger_on_s3_chains_answers_and_detects_an_edit(s3_registry: Registry, s3: Any, prefix: str) -> None:
    for payload in (b"1", b"2"):
        s3_registry.publish("m", payload, DRAFT)
    s3_registry.promote("m", 1, actor="alice")
    ledger = s3_registry.ledger("m")
    ledger.append(EntryDraft(kind="canary_step", action="start", alias=PRODUCTION, candidate=2, weight=0.05))
    during = datetime.now(UTC)
    s3_registry.promote("m", 2, actor="rollout controller")
    assert [e.seq for e in ledger.entries()] == [1, 2, 3]
    assert ledger.verify().ok
    served = ledger.serving_at(during, PRODUCTION)
    assert (served.version, served.candidate, served.weight) == (1, 2, 0.05)
    key = f"{prefix}/m/ledger/{2:012d}.json"
    entry = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    entry["weight"] = 0.5
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entry).encode())
    result = ledger.verify()
    assert not result.ok and "entry 2" in result.problems[0]
