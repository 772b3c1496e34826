"""A SeaweedFS S3 server on a free loopback port, started and stopped by the harness.

``weed mini`` runs master, volume, filer and S3 gateway in one process. Authentication is off
because no ``AWS_ACCESS_KEY_ID`` reaches its environment; clients still sign with dummy keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

#: the process of each server running, by its endpoint (for ``cpu_seconds``)
_PIDS: dict[str, int] = {}


def cpu_seconds(endpoint: str) -> float | None:
    """The CPU time (user + system) the server at ``endpoint`` has used so far; None when it
    is not one of ours or ``/proc`` cannot tell (not Linux)."""
    pid = _PIDS.get(endpoint)
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs(
    weed: Path,
    data_dir: Path,
    log_path: Path,
    auth: tuple[str, str] | None = None,
    cpus: frozenset[int] | None = None,
) -> Iterator[str]:
    """Start ``weed mini`` on loopback; yield its S3 endpoint; stop it and remove its data.
    With ``auth`` (key id, secret) in its environment SeaweedFS checks every signature; with
    ``cpus`` it runs on those CPUs only."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if auth is not None:
        env.update(AWS_ACCESS_KEY_ID=auth[0], AWS_SECRET_ACCESS_KEY=auth[1])
    argv = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        "-webdav=false",
        "-admin.ui=false",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(endpoint + "/"):
            if process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer within 60 s; see {log_path}")
            time.sleep(0.2)
        _PIDS[endpoint] = process.pid
        yield endpoint
    finally:
        _PIDS.pop(endpoint, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
