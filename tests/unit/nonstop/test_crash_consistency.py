"""Publishers killed with SIGKILL at random points never leave the registry inconsistent.

Each trial starts a real publisher process that publishes and promotes in a loop. The
test reads the registry as a replica would while it runs, kills it a random (seeded)
time after its first version, and reads everything again: every listed version must
read, verify its signature and match its artifact digest; every alias must parse and
point at a listed version; the next publish must get a new, unique number. A registry that wrote files in
place instead of renaming them shows a torn manifest or alias within a few trials.

Publishers are forked from a forkserver that imported this module once, so a trial
costs its delay and not an interpreter start-up.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

from pydantic import SecretStr

from nonstop.manifest import SampleSet
from nonstop.registry import Registry
from harness.rollout import wait_until
from tests.unit.nonstop.test_registry import DRAFT

KEY = SecretStr("crash-test-signing-key-4b8e2f0a6c1d9e3f")
TRIALS = 40
MAX_DELAY_S = 0.25  # about two and a half publish-and-promote cycles
ROWS = 5_000  # a manifest of some 200 kB: big enough to take a while to write
BIG_DRAFT = DRAFT.model_copy(update={"samples": SampleSet(inputs=[[float(i)] for i in range(ROWS)], outputs=[1] * ROWS)})


def publish_until_killed(uri: str, seed: int) -> None:
    """Publish random artifacts and move two aliases until killed; stop by itself if
    the forkserver (and so the test) is gone, or after a minute."""
    registry = Registry(uri, signing_key=KEY)
    rng = random.Random(seed)
    parent = os.getppid()
    deadline = time.monotonic() + 60
    while os.getppid() == parent and time.monotonic() < deadline:
        version = registry.publish("m", rng.randbytes(rng.randint(16_000, 256_000)), BIG_DRAFT).version
        registry.promote("m", version)
        registry.promote("m", version, alias="canary")


def _check(registry: Registry, versions: list[int]) -> None:
    """What a replica reads is whole: manifest (signature included), artifact, aliases."""
    for version in versions:
        manifest = registry.manifest("m", version)
        assert hashlib.sha256(registry.read_artifact("m", version)).hexdigest() == manifest.sha256, version
    # Aliases first: a promote always follows its version's manifest, so every target
    # read here is listed below even if a publisher moves the alias in between.
    aliases = registry.aliases("m")
    listed = registry.versions("m")
    for name, record in aliases.items():
        assert record.version in listed, f"alias {name} points at missing v{record.version}"


def _read_while_publishing(registry: Registry, root: Path, seconds: float) -> None:
    """Watch for the next manifest and read it as soon as it appears, when a torn write
    would show; read the aliases, rewritten twice a cycle, all the while. From the
    publisher's first version on, go on for `seconds`: the kill lands that far into its
    later cycles, however slowly the machine runs it."""
    folder = root / "m" / "versions"
    upcoming = [max((int(p.name) for p in folder.iterdir()), default=0) + 1 if folder.exists() else 1]

    def read() -> bool:
        landed = (folder / str(upcoming[0]) / "manifest.json").exists()
        if landed:
            _check(registry, [upcoming[0]])
            upcoming[0] += 1
        registry.aliases("m")
        return landed

    wait_until(read, 120, "the publisher's first version", every_s=0.0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        read()


def test_sigkilled_publishers_leave_only_whole_versions(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"), signing_key=KEY)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    rng = random.Random(20261101)
    checked: list[int] = []
    published_by_children = 0
    for trial in range(TRIALS):
        publisher = context.Process(target=publish_until_killed, args=(registry.uri, trial), daemon=True)
        publisher.start()
        try:
            _read_while_publishing(registry, tmp_path / "registry", rng.uniform(0.0, MAX_DELAY_S))
        finally:
            assert publisher.pid is not None
            os.kill(publisher.pid, signal.SIGKILL)
            publisher.join(timeout=10)
        assert publisher.exitcode == -signal.SIGKILL
        before = registry.versions("m")
        _check(registry, sorted(set(before) - set(checked)))
        published_by_children += len(before) - len(checked)
        after = registry.publish("m", f"after trial {trial}".encode(), DRAFT)
        assert after.version > max(before, default=0)
        assert registry.read_artifact("m", after.version) == f"after trial {trial}".encode()
        checked = [*before, after.version]
    assert published_by_children > TRIALS // 2, "the kills landed before anything was published"
