"""A real S3 API on 127.0.0.1: moto's standalone server, as s3fs tests itself."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "wit-test", "AWS_SECRET_ACCESS_KEY": "wit-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto_server on a free loopback port; `env` points boto/s3fs at it."""

    def __init__(self, port: int | None = None, log: Path | None = None):
        """`log`: a file for the server's request log (one line per request)."""
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "moto_server"
        self._log = open(log, "wb") if log else None
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=self._log or subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).read()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self, name: str) -> str:
        """Create bucket `name` (once) and return its s3:// URL."""
        import boto3
        client = boto3.client("s3", endpoint_url=self.endpoint, **{
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]})
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log:
            self._log.close()



# Fixtures (a pytest plugin, see tests/conftest.py)


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, with AWS_* pointing at it for the session
    (set before Ray starts, so Ray's workers see the same endpoint)."""
    import os
    server = S3Server(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    yield server
    server.stop()


@pytest.fixture
def s3_build(s3_server, request):
    """A fresh s3:// build URL in its own bucket."""
    import re
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "build"
    return s3_server.bucket(name) + "/build"
