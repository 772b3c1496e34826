"""How a failed git command is classified, from its stderr in git's (and curl's) words.

The URL or path git quotes may hold any digits or words: a loopback port 34512 or 45123
holds "451", a repository may be named ``r451`` or a directory ``pytest-451``. A 429 or a
503 on such a URL is a pause and another try, not a repository taken down for good.
"""

from __future__ import annotations

import errno

import pytest

from asyncbackup.github.git import classify_failure, local_disk_full


@pytest.mark.parametrize(
    "stderr",
    [
        # refused as rate limited, on a port holding 451 (the flaky test's case)
        "remote: refused\nfatal: unable to access 'http://127.0.0.1:45123/git/acme/beta.git/': "
        "The requested URL returned error: 429\n",
        "fatal: unable to access 'http://127.0.0.1:34512/git/acme/beta.git/': "
        "The requested URL returned error: 429 Too Many Requests\n",
        # a repository whose name holds 451
        "fatal: unable to access 'https://github.com/acme/r451.git/': "
        "The requested URL returned error: 503\n",
        # a fetch into a kept mirror, refused mid-transfer
        "error: RPC failed; HTTP 503 curl 22 The requested URL returned error: 503\n"
        "fatal: expected flush after ref listing\n",
        # stalled, on a port holding 451 and 404
        "fatal: unable to access 'http://127.0.0.1:40451/git/acme/beta.git/': Operation too "
        "slow. Less than 1000 bytes/sec transferred the last 2 seconds\n",
        "fatal: unable to access 'http://127.0.0.1:44041/git/acme/beta.git/': Failed to "
        "connect to 127.0.0.1 port 44041 after 0 ms: Connection refused\n",
    ],
)
def test_a_transient_failure_is_retryable_whatever_the_url_holds(stderr: str) -> None:
    assert classify_failure(stderr) == ("GitFailed", True)


@pytest.mark.parametrize(
    "stderr",
    [
        "remote: Repository unavailable due to DMCA takedown.\nfatal: unable to access "
        "'http://127.0.0.1:40123/git/acme/dmca.git/': The requested URL returned error: 451\n",
        "fatal: unable to access 'https://github.com/acme/dmca.git/': The requested URL "
        "returned error: 451 Unavailable For Legal Reasons\n",
    ],
)
def test_a_repository_taken_down_is_final(stderr: str) -> None:
    assert classify_failure(stderr) == ("UnavailableForLegalReasons", False)


@pytest.mark.parametrize(
    "stderr",
    [
        "remote: Repository not found.\n"
        "fatal: repository 'http://127.0.0.1:45100/git/acme/ghost.git/' not found\n",
        "fatal: unable to access 'http://127.0.0.1:34510/git/acme/ghost.wiki.git/': "
        "The requested URL returned error: 404\n",
        "fatal: '/srv/mirrors/acme/x.git' does not appear to be a git repository\n",
    ],
)
def test_a_missing_repository_is_not_found(stderr: str) -> None:
    assert classify_failure(stderr) == ("GitNotFound", False)


@pytest.mark.parametrize(
    "stderr",
    [
        # local failures whose paths hold a status or a transient marker's words
        "fatal: destination path '/tmp/pytest-of-root/pytest-451/t0/base/.mirrors/acme/"
        "beta.git.partial' already exists and is not an empty directory.\n",
        "fatal: could not create leading directories of '/srv/early eof/returned error: 503/"
        "beta.git': Permission denied\n",
        "fatal: could not create work tree dir '/srv/not found/x.git': Permission denied\n",
    ],
)
def test_a_local_failure_is_neither_retried_nor_a_missing_repository(stderr: str) -> None:
    assert classify_failure(stderr) == ("GitFailed", False)


@pytest.mark.parametrize(
    "stderr",
    [
        # git linked with GnuTLS (Debian, Ubuntu) when github.com's TLS connection drops
        # (nexus-xyz/nexus-cli#1317, QuilibriumNetwork/monorepo#77, argoproj/argo-cd#3994)
        "fatal: unable to access 'https://github.com/acme/beta.git/': GnuTLS recv error "
        "(-110): The TLS connection was non-properly terminated.\n",
        "fatal: unable to access 'https://github.com/acme/beta.git/': GnuTLS recv error "
        "(-54): Error in the pull function.\n",
        "fatal: unable to access 'https://github.com/acme/beta.git/': gnutls_handshake() "
        "failed: The TLS connection was non-properly terminated.\n",
        # git linked with OpenSSL: the connection reset under it
        "fatal: unable to access 'https://github.com/acme/beta.git/': OpenSSL SSL_read: "
        "SSL_ERROR_SYSCALL, errno 104\n",
        "fatal: unable to access 'https://github.com/acme/beta.git/': OpenSSL SSL_connect: "
        "SSL_ERROR_SYSCALL in connection to github.com:443\n",
        "fatal: unable to access 'https://github.com/acme/beta.git/': Empty reply from server\n",
    ],
)
def test_a_tls_connection_dropped_is_retryable_like_any_dropped_connection(stderr: str) -> None:
    """The TLS layer's words for a connection that dropped: the clone is tried again in the
    run, as after "Connection reset" or "early EOF", not left failed until the next run."""
    assert classify_failure(stderr) == ("GitFailed", True)


@pytest.mark.parametrize(
    ("stderr", "number"),
    [
        (
            "fatal: write error: No space left on device\nfatal: fetch-pack: invalid index-pack "
            "output\n",
            errno.ENOSPC,
        ),
        ("error: unable to create temporary file: Disk quota exceeded\n", errno.EDQUOT),
        ("fatal: write error: File too large\n", errno.EFBIG),
        # the server's disk, or a path that holds the words: not ours
        ("remote: fatal: write error: No space left on device\nfatal: early EOF\n", None),
        (
            "fatal: could not create work tree dir '/srv/No space left on device/x.git': "
            "Permission denied\n",
            None,
        ),
    ],
)
def test_a_full_local_disk_is_told_from_gits_words(stderr: str, number: int | None) -> None:
    """What stops a GitHub backup as a full staging disk (exit 3), not one repository's error."""
    assert local_disk_full(stderr) == number
