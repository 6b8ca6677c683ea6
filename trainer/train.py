"""The training loop, top to bottom: set-up, resume, data, model, optimizer, loop, checkpoint.

`train()` reads as the run goes; each phase below it is one function, and what the loop
runs each step (the batch stream, the step, the meter, the stop request) is in loop.py.

Single process:  wit-train --data BUILD_DIR
Many GPUs:       torchrun --nproc_per_node 8 -m trainer.cli --data BUILD_DIR --device cuda
"""

import json
import math
import os
import random
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from wit_builder.errors import WitError

from . import curves
from .checkpoint import (
    RESUME_KEYS,
    RunFolder,
    check_resumable,
    check_same_model,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .data import check_shards, count_samples, read_captions, resolve_shards
from .loop import Meter, Run, StopRequest, batch_stream, next_batch, train_step
from .model import CLIP, ModelConfig, model_config
from .tokenizer import CaptionTokenizer, check_same_tokenizer, clip_bpe, tokenizer_kind, train_bpe

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig) -> dict:
    """Train a CLIP model as `cfg` says; returns a summary of the run."""
    cfg = cfg.validate()
    # ---- set-up: the device (joining torchrun's process group), CPU threads, precision
    device, rank, world, autocast = setup(cfg)
    out = RunFolder(cfg.out)  # local, or a local mirror of an s3:// / gs:// --out
    # ---- resume: the checkpoint to go on from, checked against these settings (or none)
    ckpt, resume_path = open_resume(cfg, out, world)
    # ---- data and tokenizer: the shards, and the tokenizer their captions are read with
    urls = resolve_shards(cfg.data)
    check_shards(urls)
    tokenizer = get_tokenizer(cfg, urls, ckpt, rank, world)
    resample = cfg.resample or len(urls) < world * max(1, cfg.workers)
    # ---- model: its shape (a resume keeps the checkpoint's), seeded init, compile, DDP
    mcfg = model_shape(cfg, tokenizer)
    if ckpt is not None:
        check_same_model(ckpt, mcfg, resume_path)
    raw, model = build_model(cfg, mcfg, device, world)
    # ---- optimizer and schedule: AdamW, linear warmup then cosine decay
    optimizer, scheduler = build_optimizer(cfg, raw, device)
    run = Run(cfg, device, rank, world, out, tokenizer, raw, model, optimizer, scheduler, autocast)
    # ---- resume the state: weights, optimizer, schedule, random state and step
    step = restore(run, ckpt) if ckpt is not None else 0
    del ckpt  # the loaded weights and optimizer state: held twice until here
    start(run, step, urls, resample)
    # ---- loop: next batch, one step, meter; stop and checkpoint when due
    stop_at = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after else cfg.steps
    segment = cfg.checkpoint_every or cfg.steps
    stop, meter = StopRequest(), Meter(run, step)
    batches, saved_at, interrupted = None, -1, False
    model.train()
    try:
        while step < stop_at:
            # data: the stream restarts, reseeded, at each checkpoint segment (a resume replays it)
            if batches is None or step % segment == 0:
                batches = batch_stream(run, urls, resample, step)
            try:
                batch, wait = next_batch(batches, cfg)
            except RuntimeError:
                if not stop.requested:  # a worker killed by the same Ctrl-C: just stop
                    raise
                interrupted = True
                break
            meter.count_skipped(batch)
            # the step: forward, loss, backward, optimizer and schedule
            loss, accuracy = train_step(run, batch)
            step += 1
            meter.add(step, loss, accuracy, wait)
            # stopping: at the last step, or on a signal or --max-minutes (with many
            # processes, all stop together at the next log, where they agree)
            asked = stop.requested or meter.time_up()
            stopping = step >= stop_at or (asked and world == 1)
            # metering: a log.jsonl record every --log-every steps and at the end
            if step % cfg.log_every == 0 or stopping:
                stopping = meter.log(step, asked) or stopping
            # checkpointing: every --checkpoint-every steps and at the end
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
                checkpoint(run, step)
                saved_at = step
            if stopping:
                interrupted = stop.requested
                break
    finally:
        stop.restore()
        meter.close()
        batches = None  # shuts the DataLoader's workers down
    # ---- end: the last checkpoint, the process group, the summary
    if saved_at != step:  # interrupted while fetching data
        checkpoint(run, step)
    timing = meter.throughput(step)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted and rank == 0:
        print(f"stopped at step {step}; continue with --resume", flush=True)
    return summary(run, step, meter, timing, interrupted, urls)


def setup(cfg: TrainConfig):
    """(device, rank, world size, autocast context). Joins the process group when started
    by torchrun; sets --threads; bf16 autocast as --precision says."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise WitError(f"--device {cfg.device}: no CUDA device is visible here "
                       "(torch.cuda.is_available() is False); use --device cpu or auto")
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else local_rank
        if index >= torch.cuda.device_count():
            raise WitError(f"--device {cfg.device}: only {torch.cuda.device_count()} CUDA device(s) here")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    return device, rank, world, autocast


def open_resume(cfg: TrainConfig, out: RunFolder, world: int) -> tuple[dict | None, Path | None]:
    """(checkpoint, its path) to resume from with --resume, after refusing a resume its
    settings would not honour; (None, None) for a new run, which must not write over
    another run's checkpoint."""
    if not cfg.resume:
        if out.has_checkpoint():
            raise WitError(f"{out.where('checkpoint.pt')} exists: pass --resume to continue that run, "
                           "or choose another --out")
        return None, None
    resume_path = out / "checkpoint.pt" if cfg.resume == "auto" else Path(cfg.resume)
    if cfg.resume == "auto" and int(os.environ.get("LOCAL_RANK", 0)) == 0:
        out.fetch()  # one process per machine brings a remote run's files down
    if world > 1:
        dist.barrier()
    ckpt = load_checkpoint(resume_path, RESUME_KEYS)
    check_resumable(ckpt, cfg, resume_path)
    return ckpt, resume_path


def get_tokenizer(cfg: TrainConfig, urls: list[str], ckpt: dict | None, rank: int, world: int):
    """The checkpoint's tokenizer when resuming, CLIP's BPE (--tokenizer clip), a given
    tokenizer.json, or a BPE trained on the captions (--tokenizer build)."""
    if ckpt is not None:
        check_same_tokenizer(ckpt, cfg.tokenizer)
        return CaptionTokenizer.from_str(ckpt["tokenizer"], source="checkpoint")
    if cfg.tokenizer == "clip":
        return clip_bpe()
    if cfg.tokenizer != "build":
        return CaptionTokenizer.from_file(cfg.tokenizer)
    text = [None]
    if rank == 0:  # one process trains it, the others receive it
        captions = list(read_captions(urls, cfg.tokenizer_captions))
        if not captions:
            raise WitError(f"--data {' '.join(cfg.data)}: no .txt captions in the shards")
        text = [train_bpe(captions, cfg.vocab_size).to_str()]
    if world > 1:
        dist.broadcast_object_list(text, src=0)
    return CaptionTokenizer.from_str(text[0], source="trained BPE")


def model_shape(cfg: TrainConfig, tokenizer: CaptionTokenizer) -> ModelConfig:
    """--model's shape with the tokenizer's vocabulary and --image-size, if given."""
    mcfg = model_config(cfg.model, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.end_id,
                        **({"image_size": cfg.image_size} if cfg.image_size else {}))
    stride = mcfg.patch_size if mcfg.vision == "vit" else 32
    if mcfg.image_size % stride:
        raise WitError(f"--image-size {mcfg.image_size}: must be a multiple of {stride} for --model {cfg.model}")
    return mcfg


def build_model(cfg: TrainConfig, mcfg: ModelConfig, device, world: int):
    """(the model, what the step calls): initialised from --seed; the second is compiled
    with --compile and wrapped in DDP with many processes."""
    torch.manual_seed(cfg.seed)
    raw = CLIP(mcfg).to(device)
    if world > 1 and device.type == "cuda":  # BatchNorm statistics over the global batch (ResNet)
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    model = torch.compile(raw) if cfg.compile else raw
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return raw, model


def build_optimizer(cfg: TrainConfig, raw: CLIP, device):
    """AdamW (fused on CUDA) and its schedule, lr_factor per step."""
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    return optimizer, scheduler


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only: not on gains, biases or the logit scale."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warmup to the peak, then cosine decay to zero at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def rng_state(device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def restore(run: Run, ckpt: dict) -> int:
    """Load the checkpoint's weights, optimizer, schedule and random state into `run`;
    the step it reached."""
    run.raw.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], run.device)
    if (ckpt["world_size"], ckpt["config"]["workers"], ckpt["config"]["batch_size"]) != (
            run.world, run.cfg.workers, run.cfg.batch_size):
        print("note: resuming with another world size, worker count or batch size: "
              "the data order will differ from an uninterrupted run", flush=True)
    return ckpt["step"]


def start(run: Run, step: int, urls: list[str], resample: bool) -> None:
    """Rank 0 writes tokenizer.json and config.json, cuts log.jsonl back to `step` (a
    resume drops the records after its checkpoint) and says what the user should know."""
    cfg, out = run.cfg, run.out
    if run.rank != 0:
        return
    out.local.mkdir(parents=True, exist_ok=True)
    run.tokenizer.save(out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    curves.truncate_log(out / "log.jsonl", step)
    if resample and not cfg.resample:
        print(f"note: {len(urls)} shard(s) for {run.world} process(es) x {max(1, cfg.workers)} worker(s): "
              "drawing shards with replacement so that none runs dry", flush=True)
    if step >= cfg.steps:
        print(f"note: the run is already at --steps {cfg.steps}; nothing to train "
              "(give more --steps to train on)", flush=True)


def checkpoint(run: Run, step: int) -> None:
    """Rank 0 saves checkpoint.pt (atomically), redraws curves.png and puts the run's
    files to a remote --out."""
    if run.rank != 0:
        return
    save_checkpoint(run.out / "checkpoint.pt", {
        "step": step, "model": run.raw.state_dict(), "model_config": run.raw.cfg.to_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "config": run.cfg.to_dict(), "tokenizer": run.tokenizer.to_str(),
        "tokenizer_kind": tokenizer_kind(run.cfg.tokenizer), "rng": rng_state(run.device),
        "world_size": run.world,
    })
    curves.plot(run.out / "log.jsonl", run.out / "curves.png")
    run.out.push()


def summary(run: Run, step: int, meter: Meter, timing: dict, interrupted: bool, urls: list[str]) -> dict:
    """What train() returns (and wit-train prints as JSON)."""
    out, device = run.out, run.device
    return {
        "steps": step, "final_loss": meter.loss, "checkpoint": out.where("checkpoint.pt"),
        "log": out.where("log.jsonl"),
        "plot": out.where("curves.png") if (out / "curves.png").exists() else None,
        "tokenizer": out.where("tokenizer.json"), **timing, "skipped": meter.skipped,
        "interrupted": interrupted, "model": run.raw.cfg.name, "params": run.raw.num_params(),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "samples_in_shards": count_samples(urls),
    }
