"""Does balancing help? Three datasets of the same size from one long-tailed pool, trained alike.

    python benchmarks/exp_balance.py [--out exp-balance] [--seeds 3] [--quick]

The world: a pool of captioned drawings (the generated world's scenes and captions,
wit_builder.demo.world) whose things follow a steep Zipf law, so the head things have many
times the pairs of the tail things. wit's real stages run on it: `pool`, `match`
(queries: the world's concept words and the things' plurals) and `balance`. From the
matched pool come three arms of the same number of pairs:

    uniform   a seeded uniform sample of the matched pairs (no balancing)
    cap       `--balance cap` with the --per-query whose selection has that size
    metaclip  `--balance metaclip` with the threshold whose expected size is that size

Each arm's images are drawn in-process (the pixels the world's image server would send
for the pair's URL; no HTTP fetch) into WebDataset shards, and wit-train trains the same
tiny model for the same steps and batch, with one tokenizer for all arms, over several
seeds (the seed drives the sample, the balance coins, the model init and the data order).
Every run is scored zero-shot on held-out images of every thing. The figures: accuracy on
head / torso / tail things (terciles by pool frequency) and over all things, mean and std
over seeds; per-thing accuracy against pool frequency (a plot); pairs per thing per arm.
docs/balance.md shows a full run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from wit_builder.app import arms  # noqa: E402
from wit_builder.app.arms import ARMS, pairs_per_thing, plot, summarize, table  # noqa: E402
from wit_builder.build import catalog
from wit_builder.build.stage import StageOutput, run_stage  # noqa: E402
from wit_builder.demo.drawing import THINGS, Scene, draw_scene, encode  # noqa: E402
from wit_builder.demo.wikiprose import CONCEPTS  # noqa: E402
from wit_builder.demo.wikiprose import plural_of as _plural
from wit_builder.demo.world import EVAL_SEED_BASE, PROMPTS, UNSERVED_BASE_URL, _sample_scene, caption_of  # noqa: E402
from wit_builder.stages.balance import balance  # noqa: E402
from wit_builder.stages.match import match
from wit_builder.stages.pool import pool


@dataclass
class Setting:
    pool_rows: int = 40_000      # candidate pairs in the pool
    zipf: float = 1.5            # thing of rank r has weight r^-zipf: head/tail = 20^zipf
    max_count: int = 1           # things per picture, at most (1-5 in the world; 1 reads at 32 px)
    share: float = 0.2           # each arm holds this share of the matched pairs
    seeds: int = 3
    steps: int = 700
    batch_size: int = 64
    image_size: int = 32
    lr: float = 1e-3
    eval_per_class: int = 60
    shard_size: int = 2000
    world_seed: int = 0
    threads: int = 1

    @classmethod
    def quick(cls) -> "Setting":
        return cls(pool_rows=3000, seeds=2, steps=30, batch_size=32, eval_per_class=4, shard_size=500)


# ----------------------------------------------------------------------------------
# The world: a long-tailed pool of drawings with true captions, and held-out images.

def thing_weights(zipf: float) -> dict[str, float]:
    """The things in the world's rank order, with Zipf weights summing to 1."""
    w = 1 / np.arange(1, len(THINGS) + 1) ** zipf
    return dict(zip(THINGS, (w / w.sum()).tolist()))


def make_world(root: Path, s: Setting) -> dict:
    """pool.parquet (url, caption), eval/<thing>/*.jpg; returns the pool's thing counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng([s.world_seed, 17])
    names, p = zip(*thing_weights(s.zipf).items())
    things = rng.choice(len(names), size=s.pool_rows, p=p)
    urls, captions = [], []
    for i, t in enumerate(things):
        scene = _one_to(s.max_count, _sample_scene(rng, i, names[t]))  # seeds < the eval ones
        urls.append(UNSERVED_BASE_URL + scene.path())
        captions.append(caption_of(scene, rng))
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": urls, "caption": captions}), root / "pool.parquet")
    seed = EVAL_SEED_BASE + 7
    for name in THINGS:
        d = root / "eval" / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(s.eval_per_class):
            scene = _one_to(s.max_count, _sample_scene(rng, seed, name))
            seed += 1
            (d / f"{scene.spec}.jpg").write_bytes(encode(draw_scene(scene, s.image_size), "jpg"))
    return {n: int((things == i).sum()) for i, n in enumerate(names)}


def _one_to(most: int, scene: Scene) -> Scene:
    return replace(scene, count=min(scene.count, most))


def query_list() -> list[str]:
    """The world's concept words (things, colours, textures, backgrounds) and the things' plurals."""
    return list(CONCEPTS) + [_plural(t) for t in THINGS]


def write_queries(build: Path, queries: list[str]):
    """The `queries` stage's output for a given list (the contract match reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def work(ctx):
        n = len(queries)
        pq.write_table(pa.table({
            "query_id": pa.array(range(n), pa.int32()), "query": queries,
            "sources": [["given"]] * n, "wiki_count": [0] * n, "pmi": [0.0] * n,
            "pageviews": [0] * n}), ctx.output("queries") / "queries.parquet")
        return StageOutput(rows=n)
    return run_stage(build, "queries", {"queries": queries}, work, outputs=["queries"],
                     views={"queries": "queries/*.parquet"})


# ----------------------------------------------------------------------------------
# The arms: equal sizes, through wit's balance stage.

@dataclass
class Matched:
    uids: np.ndarray            # matched pairs' uids (str), in uid order
    values: np.ndarray          # their query ids, concatenated
    starts: np.ndarray          # where each pair's ids begin in `values`
    counts: np.ndarray          # matches per query id

    def claims(self) -> np.ndarray:
        """Pairs per query when each pair is claimed by its rarest query (ties: lowest id)."""
        key = (self.counts[self.values] << 32) | self.values
        return np.bincount(np.minimum.reduceat(key, self.starts) & 0xFFFFFFFF,
                           minlength=len(self.counts))


def matched_pool(build: Path) -> Matched:
    t = catalog.query(build, "SELECT uid, query_ids FROM matches WHERE len(query_ids) > 0 ORDER BY uid")
    c = catalog.query(build, "SELECT query_id, matches FROM match_counts")
    counts = np.zeros(max(c.column("query_id").to_pylist()) + 1, np.int64)
    counts[c.column("query_id").to_numpy()] = c.column("matches").to_numpy()
    lists = t.column("query_ids").combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    return Matched(np.asarray(t.column("uid").to_pylist()), lists.flatten().to_numpy().astype(np.int64),
                   offsets[:-1] - offsets[0], counts)


def cap_size(claims: np.ndarray, k: int) -> int:
    """Pairs `--balance cap --per-query k` keeps: each query up to k of the pairs it claims."""
    return int(np.minimum(claims, k).sum())


def metaclip_expected(m: Matched, t: int) -> float:
    """Expected pairs under MetaCLIP's rule with threshold t: sum of 1 - prod(1 - min(1, t/n_e))."""
    miss = 1 - np.minimum(1.0, t / m.counts[m.values])
    return float((1 - np.multiply.reduceat(miss, m.starts)).sum())


def smallest(f, target: float, hi: int) -> int:
    """The smallest integer x in [1, hi] with f(x) >= target (f non-decreasing)."""
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if f(mid) < target else (lo, mid)
    return lo


def plan(m: Matched, share: float) -> dict:
    """The cap per-query for the target size, the size it gives, and MetaCLIP's threshold."""
    hi, claims = int(m.counts.max()), m.claims()
    k = smallest(lambda x: cap_size(claims, x), share * len(m.uids), hi)
    size = cap_size(claims, k)
    t = smallest(lambda x: metaclip_expected(m, x), size, hi)
    if abs(metaclip_expected(m, t - 1) - size) < abs(metaclip_expected(m, t) - size):
        t -= 1
    return {"pairs": size, "per_query": k, "threshold": t,
            "metaclip_expected": round(metaclip_expected(m, t), 1), "matched": len(m.uids)}


def arm_uids(build: Path, m: Matched, arm: str, p: dict, seed: int) -> list[str]:
    if arm == "uniform":
        rng = np.random.default_rng([seed, 99])
        return sorted(m.uids[rng.choice(len(m.uids), p["pairs"], replace=False)].tolist())
    if arm == "cap":
        return _selected(build, p["per_query"], seed, arm)
    # MetaCLIP's size is random around its expectation: should a seed's coins land more
    # than 1% away, the neighbouring thresholds are tried and the closest size is kept.
    t, tried = p["threshold"], {}
    for _ in range(4):
        tried[t] = _selected(build, t, seed, arm)
        miss = len(tried[t]) - p["pairs"]
        if abs(miss) <= 0.01 * p["pairs"] or t + (1 if miss < 0 else -1) in tried:
            break
        t = max(1, t + (1 if miss < 0 else -1))
    best = min(tried, key=lambda x: (abs(len(tried[x]) - p["pairs"]), x))
    p.setdefault("thresholds_used", {})[str(seed)] = best
    return tried[best]


def _selected(build: Path, per_query: int, seed: int, mode: str) -> list[str]:
    """The uids wit's balance stage selects."""
    balance.run(balance.Config(per_query=per_query, seed=seed, mode=mode), build)
    return sorted(catalog.query(build, "SELECT uid FROM selected").column("uid").to_pylist())


# ----------------------------------------------------------------------------------
# Shards, training, evaluation.

class Pictures:
    """The image each pool URL stands for, drawn once (what the image server would send)."""

    def __init__(self, build: Path, px: int):
        t = catalog.query(build, "SELECT uid, url, text FROM pool")
        self.url = dict(zip(t.column("uid").to_pylist(), t.column("url").to_pylist()))
        self.text = dict(zip(t.column("uid").to_pylist(), t.column("text").to_pylist()))
        self.px, self.cache = px, {}

    def scene(self, uid: str) -> Scene:
        return Scene.parse(self.url[uid].rsplit("/", 1)[1].rsplit(".", 1)[0])

    def jpeg(self, uid: str) -> bytes:
        if uid not in self.cache:
            self.cache[uid] = encode(draw_scene(self.scene(uid), self.px), "jpg")
        return self.cache[uid]


def write_shards(folder: Path, uids: list[str], pics: Pictures, per_shard: int, seed: int) -> str:
    """uids in a seeded order as key.jpg + key.txt WebDataset shards; returns their glob."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    order = np.random.default_rng([seed, 5]).permutation(len(uids))
    for s in range(0, len(uids), per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in order[s: s + per_shard]:
                for ext, data in (("jpg", pics.jpeg(uids[i])), ("txt", pics.text[uids[i]].encode())):
                    info = tarfile.TarInfo(f"{uids[i]}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, BytesIO(data))
    return str(folder / "*.tar")


def train_and_score(shards: str, run: Path, tokenizer: Path, eval_dir: Path, s: Setting,
                    seed: int) -> dict:
    from trainer.evaluate import zero_shot
    from trainer.train import TrainConfig, train
    if run.exists():
        shutil.rmtree(run)
    res = train(TrainConfig(
        data=[shards], out=str(run), model="tiny", image_size=s.image_size, tokenizer=str(tokenizer),
        batch_size=s.batch_size, steps=s.steps, lr=s.lr, warmup=max(1, s.steps // 14), workers=1,
        seed=seed, threads=s.threads, checkpoint_every=0, log_every=max(1, s.steps // 10),
        progress=False))
    zs = zero_shot(res["checkpoint"], eval_dir, templates=PROMPTS, device="cpu")
    return {"per_class": zs["per_class"], "accuracy": zs["accuracy"], "final_loss": res["final_loss"],
            "samples_per_s": res["samples_per_s"]}


# ----------------------------------------------------------------------------------

def run(out: Path, s: Setting, log=print) -> dict:
    """The whole experiment under `out`; returns (and writes) results.json's content."""
    from trainer.tokenizer import train_bpe
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    pool_counts = make_world(out / "world", s)
    build = out / "build"
    write_queries(build, query_list())
    pool.run(pool.Config(pool=[str(out / "world" / "pool.parquet")]), build)
    match.run(match.Config(case_sensitive=False), build)
    m = matched_pool(build)
    p = plan(m, s.share)
    log(f"matched {p['matched']:,} of {s.pool_rows:,} pairs; arms of {p['pairs']:,} pairs: "
        f"cap --per-query {p['per_query']}, metaclip threshold {p['threshold']} "
        f"(expected {p['metaclip_expected']:,}) [{time.time() - t0:.0f} s]")
    pics = Pictures(build, s.image_size)
    tokenizer = out / "tokenizer.json"
    train_bpe((pics.text[u] for u in m.uids), 1000).save(tokenizer)
    runs = []
    for seed in range(s.seeds):
        for arm in ARMS:
            uids = arm_uids(build, m, arm, p, seed)
            shards = write_shards(out / "shards" / f"{arm}-{seed}", uids, pics, s.shard_size, seed)
            score = train_and_score(shards, out / "runs" / f"{arm}-{seed}", tokenizer,
                                    out / "world" / "eval", s, seed)
            runs.append({"arm": arm, "seed": seed, "pairs": len(uids),
                         "pairs_per_thing": pairs_per_thing(uids, pics.scene), **score})
            log(f"seed {seed} {arm:9s} {len(uids):6,} pairs  zero-shot {score['accuracy']:.1%}  "
                f"[{time.time() - t0:.0f} s]")
    results = {"setting": asdict(s), "plan": p, "pool_counts": pool_counts, "runs": runs,
               "summary": summarize(runs, pool_counts), "wall_s": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp-balance", help="working folder (default: exp-balance)")
    ap.add_argument("--quick", action="store_true", help="a small plumbing run (a minute or two)")
    ap.add_argument("--plot", help="write the plot here too (default: OUT/balance.png)")
    for name, value in asdict(Setting()).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), dest=name, default=None,
                        help=f"default {value} ({getattr(Setting.quick(), name)} with --quick)")
    args = ap.parse_args(argv)
    s = Setting.quick() if args.quick else Setting()
    for name in asdict(s):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    out = Path(args.out)
    from wit_builder.build.cluster import ensure_ray
    ensure_ray()
    results = run(out, s)
    text = table(results)
    (out / "table.md").write_text(text)
    plot(results, out / "balance.png")
    arms.save(out / "build", results, out / "balance.png")  # `wit-build report --out OUT/build`
    if args.plot:
        shutil.copy(out / "balance.png", args.plot)
    print(text)
    print(f"wall time {results['wall_s']:.0f} s; results in {out / 'results.json'}, plot {out / 'balance.png'}; "
          f"the build's report: wit-build report --out {out / 'build'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
