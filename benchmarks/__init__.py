"""Benchmarks: asyncbackup against s5cmd, rclone and the AWS CLI on a local SeaweedFS server.

``make bench`` installs the peers (``benchmarks.install``) and runs ``benchmarks.run``; the
scale benchmarks that need no server live in ``benchmarks.scale``. Results go to
``benchmarks/results/`` (git-ignored); tools and server data to ``benchmarks/.work/``.
"""
