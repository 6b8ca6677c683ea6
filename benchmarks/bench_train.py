"""Training throughput: wit-train against open_clip's trainer, same model shape, batch and shards.

    python benchmarks/bench_train.py [--model tiny] [--batch-size 32] [--steps 60] [--workers 1] [--threads 1]

Both trainers run in their own subprocess, one after the other, on the same synthetic
shards (256 px JPEGs, as img2dataset writes by default) with CLIP's own 49,408-token BPE
(open_clip's bundled merges, converted to a tokenizer.json for wit), fp32 on CPU, AdamW,
grad clipping 1.0. Throughput is read from each trainer's own 10-step log windows after the
first 10 steps; the runs are interleaved (open_clip, wit, open_clip, wit) because other jobs
on a shared machine come and go, and both the median and the best window are reported.
wit also runs with --no-trim-text (the full 77-token text, as open_clip computes it).
Then the data pipeline alone, in samples/s per worker.
"""

import argparse
import gzip
import inspect
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clip_tokenizer_json(path: Path) -> Path:
    """CLIP's BPE (open_clip's bundled merges) as a `tokenizers` tokenizer.json: 49,408 entries."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
    tok = Tokenizer(models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    words = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.add_special_tokens(["<start_of_text>", "<end_of_text>"])
    assert tok.get_vocab_size() == 49408
    tok.save(str(path))
    return path


def open_clip_config(name: str, folder: Path) -> str:
    """wit's named size as an open_clip model config (same widths, depths, heads, vocab)."""
    from trainer.model import MODEL_SIZES

    m = MODEL_SIZES[name]
    vision = {"image_size": m.image_size, "layers": m.vision_layers, "width": m.vision_width}
    if m.vision == "vit":
        vision.update(patch_size=m.patch_size, head_width=m.vision_width // m.vision_heads)
    else:
        vision.update(patch_size=None, head_width=m.vision_width * 32 // m.vision_heads)
    text = {"context_length": 77, "vocab_size": 49408, "width": m.text_width, "heads": m.text_heads,
            "layers": m.text_layers}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"wit-{name}.json").write_text(json.dumps({"embed_dim": m.embed_dim, "vision_cfg": vision,
                                                         "text_cfg": text}))
    return f"wit-{name}"


def window_rates(windows: list[tuple[int, float]], batch_size: int, warmup: int = 10) -> list[float]:
    """samples/s of each (steps, seconds) log window that starts after the first `warmup` steps."""
    rates, seen = [], 0
    for steps, seconds in windows:
        if seen >= warmup and steps:
            rates.append(steps * batch_size / seconds)
        seen += steps
    return rates


def child_wit(a) -> dict:
    import torch

    from trainer.train import TrainConfig, train

    torch.set_num_threads(a.threads)
    out = Path(a.out) / f"wit-{'trim' if a.trim else 'notrim'}"
    shutil.rmtree(out, ignore_errors=True)  # the previous round's run
    summary = train(TrainConfig(
        data=[str(Path(a.out) / "build")], out=str(out), model=a.model, tokenizer=a.tokenizer,
        batch_size=a.batch_size, steps=a.steps, warmup=10, lr=5e-4, workers=a.workers, threads=a.threads,
        log_every=10, checkpoint_every=0, trim_text=a.trim, progress=False))
    records = [json.loads(line) for line in Path(summary["log"]).read_text().splitlines()]
    windows, prev_step, prev_time = [], 0, 0.0
    for r in records:
        windows.append((r["step"] - prev_step, r["time"] - prev_time))
        prev_step, prev_time = r["step"], r["time"]
    return {"rates": window_rates(windows, a.batch_size), "final_loss": summary["final_loss"],
            "data_wait": sum(r["data_wait"] for r in records[1:]) / max(1, len(records) - 1)}


def child_open_clip(a) -> dict:
    import functools

    import open_clip
    import open_clip_train.data
    import torch
    from open_clip_train.main import main
    from webdataset.tariterators import tar_file_expander

    # open_clip 3.3 with webdataset >= 0.2.96 (img2dataset pins < 0.3) dies on the end-of-shard
    # marker (open_clip#935, webdataset#384); its own suggested fix, applied from outside
    # (older webdataset, 0.2.86 say, has no eof_value and needs none):
    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    torch.set_num_threads(a.threads)
    model = open_clip_config(a.model, Path(a.out) / "open_clip_configs")
    open_clip.add_model_config(Path(a.out) / "open_clip_configs")
    logs = Path(a.out) / "open_clip_logs"
    name = f"bench-{int(time.time())}"
    # benchmarks/gpu_check.py sets the shards, precision and torch.compile (here: 4 shards, fp32)
    main(["--train-data", getattr(a, "train_data", str(Path(a.out) / "build" / "shards" / "{00000..00003}.tar")),
          "--train-num-samples", str(a.steps * a.batch_size), "--dataset-type", "webdataset",
          "--model", model, *(["--torchcompile"] if getattr(a, "compile", False) else []),
          "--batch-size", str(a.batch_size), "--workers", str(a.workers),
          "--precision", getattr(a, "precision", "fp32"), *getattr(a, "open_clip_extra", ()),
          "--epochs", "1", "--lr", "5e-4", "--warmup", "10", "--wd", "0.2", "--grad-clip-norm", "1.0",
          "--log-every-n-steps", "10", "--logs", str(logs), "--name", name, "--save-frequency", "0",
          "--report-to", "", "--seed", "0"])
    text = (logs / name / "out.log").read_text()
    windows, waits, prev = [], [], 0
    for seen, data_t, batch_t in re.findall(r"\[\s*(\d+)/\d+ .*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+),", text):
        step = int(seen) // a.batch_size
        windows.append((step - prev, (step - prev) * float(batch_t)))
        waits.append(float(data_t) / float(batch_t))
        prev = step
    loss = re.findall(r"Contrastive_loss: ([\d.]+)", text)
    return {"rates": window_rates(windows, a.batch_size), "final_loss": float(loss[-1]) if loss else None,
            "data_wait": statistics.median(waits[2:] or waits)}


def pipeline_rate(a, workers: int, batches: int = 30) -> float:
    """wit's data pipeline alone (read, shuffle, decode, crop, tokenize), samples/s."""
    import torch

    from trainer.data import ShardStream, loader, resolve_shards
    from trainer.tokenizer import CaptionTokenizer

    torch.set_num_threads(a.threads)
    from trainer.model import MODEL_SIZES

    stream = ShardStream(resolve_shards(str(Path(a.out) / "build")), CaptionTokenizer.from_file(a.tokenizer),
                         MODEL_SIZES[a.model].image_size, a.batch_size)
    it = iter(loader(stream, workers))
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * a.batch_size / (time.perf_counter() - t0)


def run_child(kind: str, a, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", a.model, "--batch-size", str(a.batch_size),
           "--steps", str(a.steps), "--workers", str(a.workers), "--threads", str(a.threads),
           "--out", a.out, "--tokenizer", a.tokenizer, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the training process")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "train"))
    p.add_argument("--tokenizer", default="")
    p.add_argument("--child", choices=("wit", "wit-notrim", "open_clip"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.trim = a.child == "wit"
        result = child_open_clip(a) if a.child == "open_clip" else child_wit(a)
        print(json.dumps(result))
        return

    from tests.support.trainer import make_shards

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    make_shards(out / "build", shards=4, per_shard=max(64, a.steps * a.batch_size // 4 + 8), size=256)
    a.tokenizer = str(clip_tokenizer_json(out / "clip-tokenizer.json"))
    print(f"shards: 4 x {max(64, a.steps * a.batch_size // 4 + 8)} samples of 256 px JPEG "
          f"({time.perf_counter() - t0:.0f} s); model {a.model}, batch {a.batch_size}, {a.steps} steps, "
          f"{a.workers} worker(s), {a.threads} thread(s)", flush=True)
    # Interleaved, because other jobs on a shared machine come and go. Per trainer: the median
    # of its 10-step windows (typical) and the best window (closest to an idle machine).
    rates = {"open_clip": [], "wit": [], "wit-notrim": []}
    for kind in ("open_clip", "wit", "open_clip", "wit", "wit-notrim"):
        r = run_child(kind, a)
        rates[kind] += r["rates"]
        print(f"  {kind:11} median {statistics.median(r['rates']):6.1f}  best {max(r['rates']):6.1f} samples/s"
              f"   (final loss {r['final_loss']:.3f}, data wait {r['data_wait']:.2f}, wall {r['wall_s']:.0f} s)",
              flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    for label, x in (("median window", med), ("best window", best)):
        print(f"{label:13}: open_clip {x['open_clip']:6.1f}, wit {x['wit']:6.1f}, wit --no-trim-text "
              f"{x['wit-notrim']:6.1f} samples/s; ratio wit/open_clip {x['wit'] / x['open_clip']:.2f} "
              f"(full 77-token text {x['wit-notrim'] / x['open_clip']:.2f}); target >= 1.0")
    for workers in (0, 1):
        print(f"data pipeline alone, {workers} worker(s) ({'in the main process' if workers == 0 else 'one worker process'}):"
              f" {pipeline_rate(a, workers):.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
