"""The GitHub dry run's stdout: the first 20 repositories and the first 20 left out, each
list with how many more there are (a 2,000-repository organisation under --include printed
every one it left out)."""

from __future__ import annotations

from pathlib import Path

from asyncbackup.cli import _github_plan_lines
from asyncbackup.github.plan import GitHubPlan


def test_left_out_repositories_are_listed_up_to_twenty() -> None:
    left_out = {f"acme/r{i:03d}": "not matched by --include" for i in range(45)}
    plan = GitHubPlan(
        owner="acme",
        repositories=30,
        artifacts=300,
        done_artifacts=0,
        left_out=left_out,
        first_repositories=[f"acme/k{i:02d}" for i in range(20)],
        checkpoint_path=Path("/x/github_acme.checkpoint"),
        checkpoint_exists=False,
    )
    lines = _github_plan_lines(plan)
    assert lines[0].endswith("45 left out"), lines[0]
    assert lines[1:21] == [f"  acme/k{i:02d}" for i in range(20)]
    assert lines[21] == "  ... and 10 more"
    assert lines[22:42] == [
        f"  left out: acme/r{i:03d} (not matched by --include)" for i in range(20)
    ]
    assert lines[42:] == ["  ... and 25 more left out (every one in --report's left_out)"]
