"""``--processes N`` with ``--cleanup``: processes share one staging tree, each with its own
lock; one's pruning of empty folders never fails another's staged file."""

from __future__ import annotations

import threading
from pathlib import Path

from asyncbackup.staging import Staging


def test_a_folder_pruned_by_another_process_does_not_fail_a_commit(tmp_path: Path) -> None:
    # Two Staging objects are two processes: the lock that orders a commit's mkdir and rename
    # against a prune is each one's own. Threads make their system calls interleave.
    first, second = Staging(tmp_path, "src"), Staging(tmp_path, "src")
    first.prepare()
    failures: list[OSError] = []

    def stage_and_clean(staging: Staging, name: str) -> None:
        for index in range(1000):
            try:
                path = staging.store(f"data/shared/{name}-{index}", b"x")
                assert path.read_bytes() == b"x"
                staging.remove(path)  # --cleanup: the folder goes once it is empty
            except OSError as exc:
                failures.append(exc)

    threads = [
        threading.Thread(target=stage_and_clean, args=(staging, name))
        for staging, name in ((first, "a"), (second, "b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert not (tmp_path / "src" / "data").exists()  # everything staged was cleaned up
