"""Fixtures (a pytest plugin, see tests/conftest.py): one local Ray per test session,
a fresh build directory per test."""
from __future__ import annotations

import pytest


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
