"""The figures of a build with several balancing arms (benchmarks/exp_balance.py):
tercile accuracy per arm, pairs per thing, the plot; and how they reach the build's
report (`save` writes them into the build, `wit-build report` shows them)."""
from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("uniform", "cap", "metaclip")
TERCILES = ("head", "torso", "tail")


def pairs_per_thing(uids, scene_of) -> dict[str, int]:
    """How many of an arm's pairs show each thing."""
    return dict(Counter(scene_of(u).thing for u in uids))


def terciles(pool_counts: dict[str, int]) -> dict[str, list[str]]:
    """Things by pool frequency, most frequent first, cut into head / torso / tail."""
    ranked = sorted(pool_counts, key=lambda t: (-pool_counts[t], t))
    return {name: part.tolist() for name, part in zip(TERCILES, np.array_split(ranked, 3))}


def _mean_std(values) -> dict[str, float]:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def summarize(runs: list[dict], pool_counts: dict[str, int]) -> dict:
    """Per arm: tercile and overall accuracy (mean, std over seeds), the paired difference
    from the uniform arm, mean accuracy and pairs per thing, pairs per tercile."""
    groups = terciles(pool_counts)
    groups_all = {**groups, "all": [t for g in groups.values() for t in g]}
    scores = {}   # arm -> seed -> group -> accuracy
    for r in runs:
        scores.setdefault(r["arm"], {})[r["seed"]] = {
            g: float(np.mean([r["per_class"][t] for t in things])) for g, things in groups_all.items()}
    out = {"terciles": groups, "arms": {}}
    for arm in ARMS:
        if arm not in scores:
            continue
        mine = [r for r in runs if r["arm"] == arm]
        seeds = sorted(scores[arm])
        shared = [s for s in seeds if s in scores.get("uniform", {})]
        pairs = {t: float(np.mean([r["pairs_per_thing"].get(t, 0) for r in mine])) for t in pool_counts}
        out["arms"][arm] = {
            "pairs": _mean_std([r["pairs"] for r in mine]),
            "accuracy": {g: _mean_std([scores[arm][s][g] for s in seeds]) for g in groups_all},
            "vs_uniform": {g: _mean_std([scores[arm][s][g] - scores["uniform"][s][g] for s in shared])
                           for g in groups_all},
            "per_thing_accuracy": {t: float(np.mean([r["per_class"][t] for r in mine])) for t in pool_counts},
            "pairs_per_thing": pairs,
            "pairs_per_tercile": {g: round(sum(pairs[t] for t in things)) for g, things in groups.items()},
        }
    return out


def table(results: dict) -> str:
    """The markdown tables: zero-shot accuracy per tercile, the difference from uniform, pairs."""
    s, p, arms = results["setting"], results["plan"], results["summary"]["arms"]
    groups = results["summary"]["terciles"]
    cols = list(TERCILES) + ["all"]
    pc = results["pool_counts"]
    head = " | ".join(f"{g} ({len(groups[g])} things)" for g in TERCILES)
    lines = [f"Zero-shot accuracy on {len(pc)} things ({s['eval_per_class']} held-out images each), "
             f"mean ± std over {s['seeds']} seeds; {p['pairs']:,} pairs per arm, "
             f"{s['steps']} steps of batch {s['batch_size']}:", "",
             f"| arm | {head} | all |", "|---|" + "---|" * 4]
    fmt = lambda d: f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"  # noqa: E731
    for arm, a in arms.items():
        lines.append(f"| {_arm_label(arm, p)} | " + " | ".join(fmt(a["accuracy"][g]) for g in cols) + " |")
    lines += ["", "Difference from uniform, same seed (points, mean ± std over seeds):", "",
              "| arm | head | torso | tail | all |", "|---|---|---|---|---|"]
    for arm, a in arms.items():
        if arm != "uniform":
            lines.append(f"| {arm} | " + " | ".join(fmt(a["vs_uniform"][g]) for g in cols) + " |")
    lines += ["", "Pairs per thing (mean over seeds) and the pool's:", "",
              "| | pool | " + " | ".join(arms) + " |", "|---|---:|" + "---:|" * len(arms)]
    totals = {g: sum(pc[t] for t in groups[g]) for g in TERCILES}
    for g in TERCILES:
        lines.append(f"| {g} things, total | {totals[g]:,} | "
                     + " | ".join(f"{a['pairs_per_tercile'][g]:,}" for a in arms.values()) + " |")
    ranked = [t for g in TERCILES for t in groups[g]]
    for label, t in (("most frequent", ranked[0]), ("median", ranked[len(ranked) // 2]),
                     ("rarest", ranked[-1])):
        lines.append(f"| {label}: {t} | {pc[t]:,} | "
                     + " | ".join(f"{a['pairs_per_thing'][t]:,.0f}" for a in arms.values()) + " |")
    lines.append(f"| pairs in the arm | {p['matched']:,} matched | "
                 + " | ".join(f"{a['pairs']['mean']:,.0f}" for a in arms.values()) + " |")
    return "\n".join(lines) + "\n"


def _arm_label(arm: str, p: dict) -> str:
    used = sorted(set(p.get("thresholds_used", {}).values()) - {p["threshold"]})
    extra = f" (used: {', '.join(map(str, sorted(p['thresholds_used'].values())))})" if used else ""
    return {"uniform": "uniform sample", "cap": f"cap, --per-query {p['per_query']}",
            "metaclip": f"metaclip, threshold {p['threshold']}{extra}"}.get(arm, arm)


def plot(results: dict, path: Path) -> Path:
    """Against pool frequency: per-thing accuracy, its difference from the uniform arm, and
    pairs per thing, one series per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pc, arms, p = results["pool_counts"], results["summary"]["arms"], results["plan"]
    things = sorted(pc, key=lambda t: -pc[t])
    x = np.array([pc[t] for t in things])
    fig, (acc, diff, pairs) = plt.subplots(1, 3, figsize=(15, 4.4))
    base = arms.get("uniform")
    for i, (arm, a) in enumerate(arms.items()):
        label, y = _arm_label(arm, p), np.array([100 * a["per_thing_accuracy"][t] for t in things])
        acc.plot(x * (1 + 0.04 * (i - 1)), y, "o", ms=5, alpha=0.8, label=label, color=f"C{i}")
        if base is not None and arm != "uniform":
            d = y - np.array([100 * base["per_thing_accuracy"][t] for t in things])
            diff.plot(x, d, "o", ms=5, alpha=0.8, color=f"C{i}", label=f"{arm} - uniform")
            for g, group in results["summary"]["terciles"].items():
                xs = [pc[t] for t in group]
                diff.hlines(100 * a["vs_uniform"][g]["mean"], min(xs), max(xs), color=f"C{i}", lw=2)
        pairs.plot(x, [max(a["pairs_per_thing"][t], 0.5) for t in things], "o-", ms=4, label=label,
                   color=f"C{i}")
    pairs.plot(x, x, "k:", lw=1, label="the whole pool")
    diff.axhline(0, color="k", lw=0.8)
    cuts = [pc[g[-1]] for g in results["summary"]["terciles"].values()][:2]
    for ax in (acc, diff, pairs):
        ax.set_xscale("log")
        ax.set_xlabel("pairs of the thing in the pool (log)")
        for c in cuts:
            ax.axvline(c * 0.95, color="gray", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    acc.set_ylabel("zero-shot accuracy, % (mean over seeds)")
    acc.set_title("per-thing accuracy (dashed: tercile cuts)")
    diff.set_ylabel("points")
    diff.set_title("difference from uniform (bars: tercile means)")
    pairs.set_yscale("log")
    pairs.set_ylabel("pairs in the arm (log)")
    pairs.set_title("pairs per thing in each arm")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def per_thing_table(results: dict) -> str:
    """Markdown: per thing (most frequent first), accuracy % per arm and its pairs."""
    pc, arms = results["pool_counts"], results["summary"]["arms"]
    lines = ["Per thing, accuracy % (mean over seeds) and, in brackets, pairs in the arm:", "",
             "| thing | pool | " + " | ".join(arms) + " |", "|---|---:|" + "---:|" * len(arms)]
    for t in sorted(pc, key=lambda t: (-pc[t], t)):
        lines.append(f"| {t} | {pc[t]:,} | " + " | ".join(
            f"{100 * a['per_thing_accuracy'][t]:.0f} ({a['pairs_per_thing'][t]:,.0f})"
            for a in arms.values()) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------
# The arms in the build's report

RESULTS = "arms.json"      # in the build's reports/: the experiment's results.json
PLOT = "arms.png"


def save(build, results: dict, plot_path: Path) -> None:
    """Put an experiment's results and plot into `build`'s reports/, where
    `wit-build report` finds them (local or remote build)."""
    from wit_builder import storage
    reports = storage.child(storage.location(build), "reports")
    # not write_json: its sorted keys would reorder the arms and the terciles
    storage.write_bytes(storage.child(reports, RESULTS), json.dumps(results, indent=1).encode())
    storage.write_bytes(storage.child(reports, PLOT), Path(plot_path).read_bytes())


def load(build) -> dict | None:
    """The arms' results saved in `build`, or None."""
    from wit_builder import storage
    path = storage.child(storage.location(build), "reports", RESULTS)
    return storage.read_json(path) if path.exists() else None


def markdown_html(text: str) -> str:
    """The tables and paragraphs of `table()`'s markdown as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], rows[2:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</table>")
            rows.clear()
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def report_section(results: dict) -> tuple[str, dict[str, Any]]:
    """The report's HTML for the arms (the tables, the plot, per thing) and its facts."""
    arms = results["summary"]["arms"]
    facts: dict[str, Any] = {"balance_arms": ", ".join(arms)}
    for arm, a in arms.items():
        acc = a["accuracy"]["all"]
        facts[f"arm_{arm}_zero_shot"] = f"{acc['mean']:.3f} ± {acc['std']:.3f}"
    body = ("<h2>Balancing arms</h2>" + markdown_html(table(results))
            + f"<img src='{PLOT}' alt='per-thing accuracy and pairs per thing, per arm'>"
            + markdown_html(per_thing_table(results)))
    return body, facts
