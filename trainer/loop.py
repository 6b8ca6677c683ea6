"""What `train()`'s loop runs each step: the batch stream, the optimizer step, the meter
(log.jsonl, the progress bar, throughput) and the stop request (Ctrl-C, SIGTERM).

`Run` holds the parts set up once (model, optimizer, schedule, tokenizer, run folder) so
the loop passes one name around instead of a dozen.
"""

import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from wit_builder.errors import WitError

from . import curves
from .checkpoint import RunFolder
from .config import TrainConfig
from .data import ShardStream, loader, normalize
from .loss import clip_loss
from .model import CLIP
from .tokenizer import CaptionTokenizer


@dataclass
class Run:
    """One run's parts, set up once: what a step trains and what a checkpoint saves."""
    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    out: RunFolder
    tokenizer: CaptionTokenizer
    raw: CLIP  # the model itself: its weights are what a checkpoint holds
    model: torch.nn.Module  # what the step calls: raw, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: Any  # bf16 autocast, or a null context for fp32


def batch_stream(run: Run, urls: list[str], resample: bool, step: int):
    """The batches from `step` on. The stream restarts, reseeded, at the start of each
    checkpoint segment, so a run resumed mid-segment replays that segment's batches."""
    cfg = run.cfg
    segment = cfg.checkpoint_every or cfg.steps
    start = step - step % segment
    stream = ShardStream(urls, run.tokenizer, run.raw.cfg.image_size, cfg.batch_size, seed=cfg.seed,
                         segment=start, rank=run.rank, world=run.world, resample=resample,
                         shuffle_buffer=cfg.shuffle_buffer, trim_text=cfg.trim_text)
    batches = iter(loader(stream, cfg.workers, pin_memory=run.device.type == "cuda"))
    for _ in range(step - start):  # resumed mid-segment: replay its data
        next(batches)
    return batches


def next_batch(batches, cfg: TrainConfig) -> tuple[dict, float]:
    """The next batch and the seconds spent waiting for it; a shard error that makes the
    data unusable raises WitError."""
    t0 = time.perf_counter()
    batch = next(batches)
    wait = time.perf_counter() - t0
    if "fatal" in batch:
        raise WitError(f"--data {' '.join(cfg.data)}: {batch['fatal']}")
    return batch, wait


def train_step(run: Run, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, contrastive loss, backward, clip, optimizer and schedule step; the loss and
    accuracy, detached and left on the device (reading them would sync every step)."""
    images = normalize(batch["images"], run.device)
    tokens = batch["tokens"].to(run.device, non_blocking=True)
    with run.autocast:
        image_features, text_features, logit_scale = run.model(images, tokens)
    loss, accuracy = clip_loss(image_features.float(), text_features.float(), logit_scale.float())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.raw.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.raw.clamp_logit_scale()
    return loss.detach(), accuracy.detach()


class Meter:
    """Loss, accuracy and data wait summed over each --log-every window on the device,
    reduced over processes when the window is logged; the progress bar; the run's
    throughput, timed from the end of its first step (warm-up)."""

    def __init__(self, run: Run, step: int):
        self.run, self.first_step = run, step
        self.skipped, self.wait_total, self.loss, self.timed_start = 0, 0.0, None, None
        self.bar = tqdm(total=run.cfg.steps, initial=step, unit="step",
                        disable=not run.cfg.progress or run.rank != 0, dynamic_ncols=True)
        self.run_start = self.window_start = time.perf_counter()
        self.window = self.new_window()

    def new_window(self) -> dict:
        zero = lambda: torch.zeros((), device=self.run.device)  # noqa: E731
        return {"loss": zero(), "accuracy": zero(), "wait": 0.0, "steps": 0}

    def count_skipped(self, batch: dict) -> None:
        """Samples the workers could not read; the first one's error is shown."""
        if batch["error"] and self.skipped == 0 and self.run.rank == 0:
            tqdm.write(f"skipping unreadable samples, the first: {batch['error']}")
        self.skipped += batch["skipped"]

    def add(self, step: int, loss: torch.Tensor, accuracy: torch.Tensor, wait: float) -> None:
        """Count the step that just ended as `step`."""
        self.bar.update(1)
        self.window["loss"] += loss
        self.window["accuracy"] += accuracy
        self.window["wait"] += wait
        self.window["steps"] += 1
        if step == self.first_step + 1:  # throughput is timed from the end of the first step (warm-up)
            self.timed_start = time.perf_counter()
        else:
            self.wait_total += wait

    def time_up(self) -> bool:
        """--max-minutes have passed since this invocation started."""
        minutes = self.run.cfg.max_minutes
        return bool(minutes) and time.perf_counter() - self.run_start > 60 * minutes

    def log(self, step: int, stop_asked: bool) -> bool:
        """Reduce the window over the processes, append its record to log.jsonl (rank 0),
        start the next window; whether any process was asked to stop."""
        run, window = self.run, self.window
        stats = torch.stack([window["loss"], window["accuracy"],
                             torch.tensor(float(self.skipped), device=run.device),
                             torch.tensor(float(stop_asked), device=run.device)])
        if run.world > 1:
            dist.all_reduce(stats)
            stats[:2] /= run.world
        now = time.perf_counter()
        self.loss = stats[0].item() / window["steps"]
        record = {
            "step": step, "loss": self.loss, "accuracy": stats[1].item() / window["steps"],
            "lr": run.scheduler.get_last_lr()[0], "logit_scale": run.raw.logit_scale.exp().item(),
            "samples_per_s": window["steps"] * run.cfg.batch_size * run.world / (now - self.window_start),
            "data_wait": window["wait"] / (now - self.window_start), "skipped": int(stats[2].item()),
            "time": now - self.run_start,
        }
        if run.rank == 0:
            curves.append_log(run.out / "log.jsonl", record)
            self.bar.set_postfix(loss=f"{self.loss:.3f}", lr=f"{record['lr']:.2e}",
                                 sps=f"{record['samples_per_s']:.0f}")
        self.window, self.window_start = self.new_window(), now
        return stats[3].item() > 0

    def throughput(self, step: int) -> dict:
        """samples/s and the fraction of time spent waiting for data, over the timed steps
        (None when there were none)."""
        elapsed = time.perf_counter() - (self.timed_start or self.run_start)
        timed_steps = max(0, step - self.first_step - 1)
        if not timed_steps:
            return {"samples_per_s": None, "data_wait": None}
        return {"samples_per_s": timed_steps * self.run.cfg.batch_size * self.run.world / elapsed,
                "data_wait": self.wait_total / elapsed}

    def close(self) -> None:
        self.bar.close()


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
