"""GitHub to S3: git bundles, wikis, metadata and release assets of an owner's repositories.

``client`` (the REST API: pagination, rate limits, conditional requests), ``git`` (mirror,
bundle, verify, the token through a credential helper), ``listing`` (what is copied, under
which key), ``artifacts`` (copy one artifact), ``backup`` (``run_github_backup``: the
pipeline), ``plan`` (``plan_github_backup``: its ``--dry-run``).
"""

from .backup import run_github_backup
from .config import GitHubBackupConfig
from .plan import GitHubPlan, plan_github_backup

__all__ = ["GitHubBackupConfig", "GitHubPlan", "plan_github_backup", "run_github_backup"]
