"""The test session's set-up. Fixtures live in tests/support and are registered here as
pytest plugins: `ray_cluster` and `build` (support/builds.py), `s3_server` and `s3_build`
(support/s3.py). Helpers are imported from their modules by full name
(`from tests.support.fetch import make_fetch`)."""
from __future__ import annotations

import os

import pytest

pytest.register_assert_rewrite("tests.support")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The loopback S3 server's address and test credentials are set before anything starts
# Ray, so Ray's workers inherit them; the server itself starts only if a test needs it.
from tests.support.s3 import CREDENTIALS, free_port  # noqa: E402

S3_PORT = free_port()
for _k, _v in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}"}.items():
    os.environ.setdefault(_k, _v)

pytest_plugins = ["tests.support.builds", "tests.support.s3"]
