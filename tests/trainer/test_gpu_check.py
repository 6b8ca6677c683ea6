"""benchmarks/gpu_check.sh --dry-run: the GPU check's set-up runs here, on a CPU, and stops."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_sets_up_and_stops_before_training(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "WIT_GPU_SCRATCH": str(tmp_path / "scratch"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--model", "tiny"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert results["environment"]["cuda"] is False
    assert "runs" not in results                       # stopped after the set-up
    assert [r["trainer"] for r in results["plan"]] == ["wit", "wit", "open_clip"]
    assert results["flops_per_sample"] > 0
    # the CUDA tests were collected and skipped, none failed
    assert "skipped" in results["cuda_tests"]["tail"][-1] and "failed" not in results["cuda_tests"]["tail"][-1]
    assert len(list((tmp_path / "scratch" / "shards").glob("*.tar"))) == 2
    assert "dry run: set-up done" in (tmp_path / "out" / "gpu_check.log").read_text()
