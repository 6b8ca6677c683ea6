"""benchmarks/exp_balance.py --quick: the balancing experiment's plumbing (not its outcome)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import exp_balance  # noqa: E402


@pytest.mark.slow
def test_quick_run_gives_equal_arms_and_the_table(tmp_path, ray_cluster, capsys):
    out = tmp_path / "exp"
    assert exp_balance.main(["--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    plan, runs = results["plan"], results["runs"]
    s = exp_balance.Setting.quick()
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted(
        (a, seed) for a in ("uniform", "cap", "metaclip") for seed in range(s.seeds))
    # Equal sizes: the uniform sample and the cap selection exactly, MetaCLIP's random
    # size near them (a quick pool's thresholds are coarse: a few per cent).
    for r in runs:
        if r["arm"] == "metaclip":
            assert abs(r["pairs"] - plan["pairs"]) <= 0.05 * plan["pairs"]
        else:
            assert r["pairs"] == plan["pairs"]
    # The cap arm is wit's real cap: no query selects more than --per-query pairs, and
    # the rarest thing (below the cap) keeps every one of its pool pairs.
    from wit_builder.build import catalog
    counts = catalog.query(out / "build", "SELECT max(selected) AS m FROM balance_counts").to_pylist()
    assert 0 < counts[0]["m"]
    pool = results["pool_counts"]
    rarest = min(pool, key=lambda t: (pool[t], t))
    cap_runs = [r for r in runs if r["arm"] == "cap"]
    assert all(r["pairs_per_thing"].get(rarest, 0) == pool[rarest] for r in cap_runs)
    uniform_runs = [r for r in runs if r["arm"] == "uniform"]
    assert sum(r["pairs_per_thing"].get(rarest, 0) for r in uniform_runs) < sum(
        r["pairs_per_thing"][rarest] for r in cap_runs)
    # Every thing is scored in every run; the table and the plot are written.
    assert all(set(r["per_class"]) == set(pool) for r in runs)
    table = (out / "table.md").read_text()
    for word in ("uniform sample", f"cap, --per-query {plan['per_query']}", "metaclip, threshold",
                 "head (7 things)", "tail (6 things)", "Difference from uniform"):
        assert word in table
    assert (out / "balance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out
    # The build the experiment made carries its arms into `wit-build report`: the same
    # tables as table.md, the plot beside the HTML, and each arm's overall accuracy.
    from wit_builder.app import cli
    assert cli.main(["report", "--out", str(out / "build")]) == 0
    page = (out / "build" / "reports" / "index.html").read_text()
    assert "<h2>Balancing arms</h2>" in page and "<img src='arms.png'" in page
    assert (out / "build" / "reports" / "arms.png").read_bytes() == (out / "balance.png").read_bytes()
    for arm, a in results["summary"]["arms"].items():
        acc = a["accuracy"]["all"]
        assert f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}</td></tr>" in page, arm
    facts = json.loads((out / "build" / "reports" / "facts.json").read_text())
    assert facts["balance_arms"] == "uniform, cap, metaclip"
    assert facts["arm_cap_zero_shot"] == (
        f"{results['summary']['arms']['cap']['accuracy']['all']['mean']:.3f} ± "
        f"{results['summary']['arms']['cap']['accuracy']['all']['std']:.3f}")
