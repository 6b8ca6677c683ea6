"""The training loop, top to bottom: setup, data, tokenizer, model, optimizer, loop, checkpoint.

Single process:  wit-train --data BUILD_DIR
Many GPUs:       torchrun --nproc_per_node 8 -m trainer.cli --data BUILD_DIR --device cuda
"""

import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from wit_builder.errors import WitError

from . import curves
from .checkpoint import (RESUME_KEYS, RunFolder, check_resumable, check_same_model, load_checkpoint,
                         save_checkpoint)
from .config import TrainConfig
from .data import ShardStream, check_shards, count_samples, loader, normalize, read_captions, resolve_shards
from .loss import clip_loss
from .model import CLIP, model_config
from .tokenizer import CaptionTokenizer, check_same_tokenizer, clip_bpe, tokenizer_kind, train_bpe

__all__ = ["TrainConfig", "train"]


def setup_device(cfg: TrainConfig):
    """(device, rank, world size). Joins the process group when started by torchrun."""
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
    return device, rank, world


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


class StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.requested, self.previous = False, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def request(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig) -> dict:
    """Train a CLIP model as `cfg` says; returns a summary of the run."""
    cfg = cfg.validate()
    # ---- setup
    device, rank, world = setup_device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    out = RunFolder(cfg.out)  # local, or a local mirror of an s3:// / gs:// --out
    ckpt_path, log_path, plot_path = out / "checkpoint.pt", out / "log.jsonl", out / "curves.png"
    ckpt, resume_path = None, ckpt_path if cfg.resume == "auto" else Path(cfg.resume)
    if cfg.resume:
        if cfg.resume == "auto" and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            out.fetch()  # one process per machine brings a remote run's files down
        if world > 1:
            dist.barrier()
        ckpt = load_checkpoint(resume_path, RESUME_KEYS)
        check_resumable(ckpt, cfg, resume_path)
    elif out.has_checkpoint():
        raise WitError(f"{out.where('checkpoint.pt')} exists: pass --resume to continue that run, "
                       "or choose another --out")
    # ---- data and tokenizer
    urls = resolve_shards(cfg.data)
    check_shards(urls)
    tokenizer = get_tokenizer(cfg, urls, ckpt, rank, world)
    resample = cfg.resample or len(urls) < world * max(1, cfg.workers)
    # ---- model
    mcfg = model_config(cfg.model, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.end_id,
                        **({"image_size": cfg.image_size} if cfg.image_size else {}))
    stride = mcfg.patch_size if mcfg.vision == "vit" else 32
    if mcfg.image_size % stride:
        raise WitError(f"--image-size {mcfg.image_size}: must be a multiple of {stride} for --model {cfg.model}")
    if ckpt is not None:
        check_same_model(ckpt, mcfg, resume_path)
    torch.manual_seed(cfg.seed)
    raw = CLIP(mcfg).to(device)
    if world > 1 and device.type == "cuda":  # BatchNorm statistics over the global batch (ResNet)
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    model = torch.compile(raw) if cfg.compile else raw
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # ---- optimizer and schedule
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    step = 0
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], device)
        step = ckpt["step"]
        if (ckpt["world_size"], ckpt["config"]["workers"], ckpt["config"]["batch_size"]) != (world, cfg.workers, cfg.batch_size):
            print("note: resuming with another world size, worker count or batch size: "
                  "the data order will differ from an uninterrupted run", flush=True)
        del ckpt
    if rank == 0:
        out.local.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out / "tokenizer.json")
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        curves.truncate_log(log_path, step)
        if resample and not cfg.resample:
            print(f"note: {len(urls)} shard(s) for {world} process(es) x {max(1, cfg.workers)} worker(s): "
                  "drawing shards with replacement so that none runs dry", flush=True)

    def checkpoint():
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "step": step, "model": raw.state_dict(), "model_config": mcfg.to_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "config": cfg.to_dict(), "tokenizer": tokenizer.to_str(),
                "tokenizer_kind": tokenizer_kind(cfg.tokenizer), "rng": rng_state(device),
                "world_size": world,
            })
            curves.plot(log_path, plot_path)
            out.push()

    # ---- loop
    segment = cfg.checkpoint_every or cfg.steps  # the data stream restarts, reseeded, at each checkpoint
    stop_at = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after else cfg.steps
    if step >= cfg.steps and rank == 0:
        print(f"note: the run is already at --steps {cfg.steps}; nothing to train "
              "(give more --steps to train on)", flush=True)
    stop = StopRequest()
    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=not cfg.progress or rank != 0, dynamic_ncols=True)
    batches, first_step, saved_at, interrupted = None, step, -1, False
    run_start = window_start = time.perf_counter()
    skipped, wait_total, loss_value, timed_start = 0, 0.0, None, None
    new_window = lambda: {"loss": torch.zeros((), device=device),  # noqa: E731
                          "accuracy": torch.zeros((), device=device), "wait": 0.0, "steps": 0}
    window = new_window()
    model.train()
    try:
        while step < stop_at:
            if batches is None or step % segment == 0:
                start = step - step % segment
                stream = ShardStream(urls, tokenizer, mcfg.image_size, cfg.batch_size, seed=cfg.seed,
                                     segment=start, rank=rank, world=world, resample=resample,
                                     shuffle_buffer=cfg.shuffle_buffer, trim_text=cfg.trim_text)
                batches = iter(loader(stream, cfg.workers, pin_memory=device.type == "cuda"))
                for _ in range(step - start):  # resumed mid-segment: replay its data
                    next(batches)
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except RuntimeError:
                if not stop.requested:  # a worker killed by the same Ctrl-C: just stop
                    raise
                interrupted = True
                break
            wait = time.perf_counter() - t0
            if "fatal" in batch:
                raise WitError(f"--data {' '.join(cfg.data)}: {batch['fatal']}")
            if batch["error"] and skipped == 0 and rank == 0:
                tqdm.write(f"skipping unreadable samples, the first: {batch['error']}")
            skipped += batch["skipped"]
            images, tokens = normalize(batch["images"], device), batch["tokens"].to(device, non_blocking=True)
            with autocast:
                image_features, text_features, logit_scale = model(images, tokens)
            loss, accuracy = clip_loss(image_features.float(), text_features.float(), logit_scale.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            raw.clamp_logit_scale()
            step += 1
            bar.update(1)
            window["loss"] += loss.detach()
            window["accuracy"] += accuracy.detach()
            window["wait"] += wait
            window["steps"] += 1
            if step == first_step + 1:  # throughput is timed from the end of the first step (warm-up)
                timed_start = time.perf_counter()
            else:
                wait_total += wait
            time_up = bool(cfg.max_minutes) and time.perf_counter() - run_start > 60 * cfg.max_minutes
            stopping = step >= stop_at or ((stop.requested or time_up) and world == 1)
            if step % cfg.log_every == 0 or stopping:
                stats = torch.stack([window["loss"], window["accuracy"],
                                     torch.tensor(float(skipped), device=device),
                                     torch.tensor(float(stop.requested or time_up), device=device)])
                if world > 1:
                    dist.all_reduce(stats)
                    stats[:2] /= world
                now = time.perf_counter()
                loss_value = stats[0].item() / window["steps"]
                record = {
                    "step": step, "loss": loss_value, "accuracy": stats[1].item() / window["steps"],
                    "lr": scheduler.get_last_lr()[0], "logit_scale": raw.logit_scale.exp().item(),
                    "samples_per_s": window["steps"] * cfg.batch_size * world / (now - window_start),
                    "data_wait": window["wait"] / (now - window_start), "skipped": int(stats[2].item()),
                    "time": now - run_start,
                }
                if rank == 0:
                    curves.append_log(log_path, record)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{record['lr']:.2e}",
                                    sps=f"{record['samples_per_s']:.0f}")
                stopping = stopping or stats[3].item() > 0
                window, window_start = new_window(), now
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
                checkpoint()
                saved_at = step
            if stopping:
                interrupted = stop.requested
                break
    finally:
        stop.restore()
        bar.close()
        batches = None
    if saved_at != step:  # interrupted while fetching data
        checkpoint()
    elapsed = time.perf_counter() - (timed_start or run_start)
    timed_steps = max(0, step - first_step - 1)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted and rank == 0:
        print(f"stopped at step {step}; continue with --resume", flush=True)
    return {
        "steps": step, "final_loss": loss_value, "checkpoint": out.where("checkpoint.pt"),
        "log": out.where("log.jsonl"), "plot": out.where("curves.png") if plot_path.exists() else None,
        "tokenizer": out.where("tokenizer.json"),
        "samples_per_s": timed_steps * cfg.batch_size * world / elapsed if timed_steps else None,
        "data_wait": wait_total / elapsed if timed_steps else None, "skipped": skipped,
        "interrupted": interrupted, "model": mcfg.name, "params": raw.num_params(),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "samples_in_shards": count_samples(urls),
    }
