"""Shared fixtures: one local Ray per test session, a fresh build directory per test."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The loopback S3 server's address and test credentials are set before anything starts
# Ray, so Ray's workers inherit them; the server itself starts only if a test needs it.
from s3_server import CREDENTIALS, free_port  # noqa: E402

S3_PORT = free_port()
for _k, _v in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}"}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray started once for the whole session (2 CPUs, like CI)."""
    from wit_builder.build.cluster import ensure_ray, shutdown
    ensure_ray(num_cpus=2)
    yield
    shutdown()


@pytest.fixture
def build(tmp_path):
    """An empty build directory."""
    d = tmp_path / "wit-data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, with AWS_* pointing at it for the session
    (set before Ray starts, so Ray's workers see the same endpoint)."""
    from s3_server import S3Server
    server = S3Server(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    yield server
    server.stop()


@pytest.fixture
def s3_build(s3_server, request):
    """A fresh s3:// build URL in its own bucket."""
    import re
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "build"
    return s3_server.bucket(name) + "/build"
