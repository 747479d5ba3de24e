"""The instance's shared session count: one limit for every worker, never passed by two at once, and the places of
a worker that dies (however it dies) given back; the boot key is the same for every process of the instance."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from instance import Instance, boot_key
from tests.support.servers import ROOT


def test_workers_share_one_limit(tmp_path: Path) -> None:
    first, second = Instance(tmp_path, 3, owned=False), Instance(tmp_path, 3, owned=False)
    assert first.reserve() and second.reserve() and first.reserve()
    assert not second.reserve() and not first.reserve()
    assert first.total() == second.total() == (3, 2)
    first.release()
    assert second.reserve() and second.total() == (3, 2)
    second.close()
    assert first.total() == (1, 1)
    first.close()


def test_concurrent_reservations_never_pass_the_limit(tmp_path: Path) -> None:
    workers = [Instance(tmp_path, 5, owned=False) for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        taken = list(pool.map(lambda n: workers[n % 4].reserve(), range(64)))
    assert taken.count(True) == 5 and workers[0].total() == (5, 4)
    for worker in workers:
        worker.close()


def test_a_killed_worker_gives_its_places_back(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from instance import Instance
        worker = Instance(Path({str(tmp_path)!r}), 3, owned=False)
        assert worker.reserve() and worker.reserve()
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    survivor = Instance(tmp_path, 3, owned=False)
    gone: list[int] = []
    survivor._on_dead_worker = gone.append
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert dead.returncode == -9, dead.stderr
    assert survivor.reserve()  # 2 of the dead worker's + this one would fill it; the dead one's are dropped
    assert survivor.reserve() and survivor.reserve() and not survivor.reserve()
    assert survivor.total() == (3, 1) and gone == [int(dead.stdout)]
    survivor.close()


def test_one_boot_key_per_instance(tmp_path: Path) -> None:
    key = boot_key(tmp_path)
    assert len(key) == 32 and boot_key(tmp_path) == key
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["secret.key"]
