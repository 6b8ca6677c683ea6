"""wit-train on one GPU: the CUDA tests, then ViT-B/32 throughput against open_clip's trainer.

    bash benchmarks/gpu_check.sh            # on the GPU machine (installs, then runs this)
    python benchmarks/gpu_check.py --dry-run   # any machine: the set-up only, then stop

In order, each timed and printed: the environment; synthetic shards on local disk (256 px
JPEGs, made by all cores); the `cuda`-marked trainer tests (tests/trainer/test_trainer_cuda.py);
the model FLOPs of one ViT-B/32 training sample (torch's FLOP counter on one forward and
backward at 77 text tokens); then, each in a fresh process, wit-train at --batch-size with
bf16 autocast without and with torch.compile, the largest batch that fits (probed with
synthetic tensors) and open_clip's own trainer (open_clip_train.main, same shards, model
shape, tokenizer, batch, bf16 autocast as `amp_bf16`). Per run: samples/s (timed after
the first steps), the share of step time spent waiting for data, peak GPU memory, and
MFU = FLOPs per sample x samples/s / --peak-tflops (989: the H200's dense bf16 figure).
Everything lands in OUT/gpu_check.json (OUT: $OUT, else /tmp/wit-gpu-check).
--dry-run stops after the set-up (shards, tests, FLOP count, the two trainers' settings).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import bench_train  # noqa: E402  (the CPU benchmark's open_clip child and CLIP tokenizer)

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def environment() -> dict:
    import torch
    env = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
           "gpus": torch.cuda.device_count(), "python": sys.version.split()[0]}
    if env["cuda"]:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
    for mod in ("webdataset", "open_clip", "tokenizers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 — reported, and the run stops below
            env[mod] = f"missing ({type(e).__name__})"
    return env


def _one_shard(job):
    from tests.support.trainer import make_shards
    folder, index, per_shard, size = job
    tmp = Path(folder) / f"part-{index}"
    (path,) = make_shards(tmp, shards=1, per_shard=per_shard, size=size, seed=index)
    final = Path(folder) / "shards" / f"{index:05d}.tar"
    os.replace(path, final)
    shutil.rmtree(tmp)
    return per_shard


def make_shards(folder: Path, shards: int, per_shard: int, size: int = 256) -> str:
    """`shards` tars of `per_shard` captioned drawings, written in parallel; returns a brace pattern."""
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(min(shards, os.cpu_count() or 1)) as pool:
        total = sum(pool.map(_one_shard, [(str(folder), i, per_shard, size) for i in range(shards)]))
    (folder / "shards" / "sizes.json").write_text(json.dumps(
        {f"{i:05d}.tar": per_shard for i in range(shards)}))
    assert total == shards * per_shard
    return str(folder / "shards" / f"{{00000..{shards - 1:05d}}}.tar")


def cuda_tests(out: Path, timeout: int) -> dict:
    """pytest -m cuda on tests/trainer/test_trainer_cuda.py: passed / skipped / failed and the tail."""
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "trainer" / "test_trainer_cuda.py"), "-m", "cuda",
           "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={out / 'cuda_tests.xml'}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        tail, rc = (proc.stdout + proc.stderr).strip().splitlines()[-12:], proc.returncode
    except subprocess.TimeoutExpired:
        tail, rc = [f"timed out after {timeout} s"], -1
    return {"returncode": rc, "tail": tail}


def flops_per_sample(model: str, device: str, batch: int = 2) -> float:
    """Model FLOPs of one training sample (forward + backward, 77 text tokens), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.loss import clip_loss
    from trainer.model import CLIP, model_config
    cfg = model_config(model, vocab_size=49408, eot_id=49407)
    net = CLIP(cfg).to(device)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    tokens = torch.randint(0, 49406, (batch, 77), device=device)
    tokens[:, -1] = 49407
    with FlopCounterMode(display=False) as counter:
        loss, _ = clip_loss(*net(images, tokens))
        loss.backward()
    flops = counter.get_total_flops() / batch
    del net, images, tokens, loss
    if device == "cuda":
        torch.cuda.empty_cache()   # the runs below are other processes: leave them the memory
    return flops


def largest_batch(model: str, candidates: list[int]) -> int:
    """The largest candidate batch whose bf16 forward and backward fits (synthetic tensors)."""
    import torch

    from trainer.loss import clip_loss
    from trainer.model import CLIP, model_config
    cfg = model_config(model, vocab_size=49408, eot_id=49407)
    net = CLIP(cfg).cuda()
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    best = 0
    for b in sorted(candidates):
        try:
            images = torch.randn(b, 3, cfg.image_size, cfg.image_size, device="cuda")
            tokens = torch.randint(0, 49406, (b, 77), device="cuda")
            tokens[:, -1] = 49407
            for _ in range(2):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    feats = net(images, tokens)
                loss, _ = clip_loss(*(f.float() for f in feats))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            best = b
            say(f"  batch {b}: fits, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        except torch.OutOfMemoryError:
            say(f"  batch {b}: out of memory")
            break
        finally:
            images = tokens = feats = loss = None
            torch.cuda.empty_cache()
    del net, opt
    torch.cuda.empty_cache()
    return best


# ----------------------------------------------------------------------------------
# The training runs, each in a child process of its own (fresh CUDA context and peak).

def child_wit(a) -> dict:
    import torch

    from trainer.train import TrainConfig, train
    out = Path(a.out) / f"wit-{a.batch_size}-{'compiled' if a.compile else 'eager'}"
    shutil.rmtree(out, ignore_errors=True)
    s = train(TrainConfig(data=[a.train_data], out=str(out), model=a.model, tokenizer=a.tokenizer,
                          batch_size=a.batch_size, steps=a.steps, warmup=10, lr=5e-4, workers=a.workers,
                          device=a.device, precision="bf16", compile=a.compile, log_every=10,
                          checkpoint_every=0, progress=False))
    records = [json.loads(line) for line in Path(s["log"]).read_text().splitlines()]
    windows = [r["samples_per_s"] for r in records[2:]] or [r["samples_per_s"] for r in records]
    return {"samples_per_s": s["samples_per_s"], "median_window": statistics.median(windows),
            "data_wait": s["data_wait"], "peak_memory_gb": s["peak_memory_gb"],
            "final_loss": s["final_loss"], "steps": s["steps"]}


def child_open_clip(a) -> dict:
    import torch
    a.precision, a.open_clip_extra, a.threads = "amp_bf16", ["--dataset-resampled"], 4
    r = bench_train.child_open_clip(a)
    rates = r["rates"][1:] or r["rates"]
    return {"samples_per_s": statistics.mean(rates), "median_window": statistics.median(rates),
            "data_wait": r["data_wait"],
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else 0.0,
            "final_loss": r["final_loss"], "steps": a.steps}


def run_child(kind: str, a, batch: int, steps: int, compile_: bool, timeout: int) -> dict:
    left = a.budget - (time.perf_counter() - T0)   # the whole check stays inside --budget
    if left < 45:
        return {"error": f"skipped: {left:.0f} s left of --budget {a.budget:.0f}"}
    timeout = int(min(timeout, left - 15))
    cmd = [sys.executable, __file__, "--child", kind, "--model", a.model, "--batch-size", str(batch),
           "--steps", str(steps), "--workers", str(a.workers), "--out", str(a.out),
           "--tokenizer", a.tokenizer, "--train-data", a.train_data, "--device", a.device,
           *(["--compile"] if compile_ else [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def report(label: str, r: dict, flops: float, peak_tflops: float) -> str:
    if "error" in r:
        return f"{label:34s} FAILED: {r['error'].splitlines()[-1] if r['error'] else '?'}"
    r["mfu"] = flops * r["samples_per_s"] / (peak_tflops * 1e12)
    return (f"{label:34s} {r['samples_per_s']:8.0f} samples/s (median window {r['median_window']:.0f})"
            f"  data wait {100 * r['data_wait']:4.1f}%  peak {r['peak_memory_gb'] or 0:5.1f} GiB"
            f"  MFU {100 * r['mfu']:4.1f}%  loss {r['final_loss']:.3f}  ({r['wall_s']:.0f} s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="stop after the set-up (runs on a CPU)")
    p.add_argument("--model", default="vit-b-32")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=0, help="data workers; 0 = the CPU count - 2, at least 1")
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--per-shard", type=int, default=512)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the chip's dense bf16 peak")
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds for the whole check: runs that would end later are cut or skipped")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/wit-gpu-check")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of the runs
    p.add_argument("--child", choices=("wit", "open_clip"), help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--train-data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child_wit(a) if a.child == "wit" else child_open_clip(a)))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: v for k, v in vars(a).items() if k not in ("child", "compile")}}
    a.workers = a.workers or max(1, (os.cpu_count() or 2) - 2)
    env = results["environment"] = environment()
    say("environment: " + json.dumps(env))
    missing = [m for m in ("webdataset", "open_clip") if str(env[m]).startswith("missing")]
    if missing:
        say(f"stop: {', '.join(missing)} not installed (bash benchmarks/gpu_check.sh installs them)")
        return 2
    if not env["cuda"] and not a.dry_run and a.device == "cuda":
        say("stop: no CUDA device visible (torch.cuda.is_available() is False): blocked, no GPU figures")
        return 3
    work = Path(os.environ.get("WIT_GPU_SCRATCH", "/tmp/wit-gpu-scratch"))
    shutil.rmtree(work, ignore_errors=True)
    shards, per_shard = (2, 16) if a.dry_run else (a.shards, a.per_shard)
    a.train_data = make_shards(work, shards, per_shard)
    a.tokenizer = str(bench_train.clip_tokenizer_json(work / "clip-tokenizer.json"))
    a.out = work / "runs"
    say(f"shards: {shards} x {per_shard} samples of 256 px JPEG under {work}; CLIP's BPE tokenizer")
    results["cuda_tests"] = cuda_tests(out, timeout=240)
    say("cuda tests (pytest -m cuda): " + " / ".join(results["cuda_tests"]["tail"][-1:]))
    for line in results["cuda_tests"]["tail"][:-1]:
        print("    " + line)
    flops = results["flops_per_sample"] = flops_per_sample(a.model, "cuda" if env["cuda"] else "cpu")
    say(f"{a.model}: {flops / 1e9:.1f} GFLOPs per training sample (forward + backward, 77 text tokens)")
    plan = [("wit", a.batch_size, a.steps, False), ("wit", a.batch_size, a.steps, True),
            ("open_clip", a.batch_size, a.steps, False)]
    results["plan"] = [dict(zip(("trainer", "batch", "steps", "compile"), x)) for x in plan]
    if a.dry_run:
        say("dry run: set-up done; the runs would be " + json.dumps(results["plan"]))
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        return 0 if results["cuda_tests"]["returncode"] in (0, 5) else 1
    runs = results["runs"] = {}
    for kind, batch, steps, comp in plan:
        label = f"{kind} batch {batch} bf16{' compile' if comp else ''}"
        runs[label] = run_child(kind, a, batch, steps, comp, timeout=240 if comp else 150)
        say(report(label, runs[label], flops, a.peak_tflops))
    say("largest batch (bf16, eager, synthetic tensors):")
    big = results["largest_batch"] = (largest_batch(a.model, [512, 1024, 2048, 4096, 8192, 12288])
                                      if a.device == "cuda" else 0)
    if big > a.batch_size:  # as many samples as the batch-256 runs, at least 30 steps
        label = f"wit batch {big} bf16"
        runs[label] = run_child("wit", a, big, max(30, a.steps * a.batch_size // big), False, timeout=150)
        say(report(label, runs[label], flops, a.peak_tflops))
    w, o = (runs.get(f"{k} batch {a.batch_size} bf16", {}) for k in ("wit", "open_clip"))
    if "samples_per_s" in w and "samples_per_s" in o:
        results["ratio_wit_open_clip"] = w["samples_per_s"] / o["samples_per_s"]
        say(f"ratio wit / open_clip at batch {a.batch_size}, bf16, eager: {results['ratio_wit_open_clip']:.2f}"
            " (target >= 1.0); data wait target < 5%")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    say(f"results: {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
