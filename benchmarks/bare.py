"""A bare HTTP client doing the benchmark's job: the server's floor, not a peer.

No signing, no retries, no checksums, no checkpoint: one thread per request slot, each GETs an
object into the staging directory and PUTs it from there with ``sendfile`` (staged), or sends
one CopyObject (direct). It only works against a server that checks no signatures (the
harness's SeaweedFS without ``--auth``). Its time is what the server and the disk need for the
job when the client costs next to nothing: for large objects, where the server sets the pace,
the least any tool can take on this machine. On small objects Python's per-request cost shows,
so there it is no floor.

    python benchmarks/bare.py staged|direct ENDPOINT SRC DST PREFIX STAGE CONCURRENCY
"""

from __future__ import annotations

import http.client
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_CHUNK = 1024 * 1024


class Bare:
    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port)
        return conn

    def response(self, expect: int = 200) -> http.client.HTTPResponse:
        response = self.connection().getresponse()
        if response.status != expect:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        return response

    def keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        token = ""
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            self.connection().request("GET", f"/{bucket}?{query}")
            root = ET.fromstring(self.response().read())
            keys += [el.text or "" for el in root.iter(f"{_NS}Key")]
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if not token:
                return keys

    def get(self, bucket: str, key: str, path: Path) -> None:
        self.connection().request("GET", f"/{bucket}/{quote(key)}")
        response = self.response()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with path.open("wb") as out:
            while count := response.readinto(buffer):
                out.write(view[:count])

    def put(self, bucket: str, key: str, path: Path) -> None:
        conn = self.connection()
        with path.open("rb") as body:
            conn.putrequest("PUT", f"/{bucket}/{quote(key)}", skip_accept_encoding=True)
            conn.putheader("Content-Length", str(path.stat().st_size))
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.sendfile(body)
        self.response().read()

    def copy(self, src: str, dst: str, key: str) -> None:
        headers = {"x-amz-copy-source": f"/{src}/{quote(key)}", "Content-Length": "0"}
        self.connection().request("PUT", f"/{dst}/{quote(key)}", headers=headers)
        self.response().read()


def main(argv: list[str]) -> int:
    mode, endpoint, src, dst, prefix, stage, concurrency = argv
    bare = Bare(endpoint)
    keys = bare.keys(src, f"{prefix}/")
    staging = Path(stage)

    def staged(index_key: tuple[int, str]) -> None:
        index, key = index_key
        path = staging / str(index)  # the workloads' keys are flat; an index keeps it so
        bare.get(src, key, path)
        bare.put(dst, key, path)

    def direct(index_key: tuple[int, str]) -> None:
        bare.copy(src, dst, index_key[1])

    with ThreadPoolExecutor(int(concurrency)) as pool:
        list(pool.map(staged if mode == "staged" else direct, enumerate(keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
