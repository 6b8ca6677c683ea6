"""Checkpoints: one file holding the model, its shape, the tokenizer, and the run's state.

Written to a temporary name, fsynced and renamed, so a crash mid-write never leaves a
half checkpoint where the last good one was.
"""

import os
from pathlib import Path

import torch

from wit_builder.errors import WitError

from .model import CLIP, ModelConfig
from .tokenizer import CaptionTokenizer

FORMAT = "wit-train/1"


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


RESUME_KEYS = ("step", "model", "model_config", "optimizer", "scheduler", "config", "tokenizer",
               "rng", "world_size")
MODEL_KEYS = ("model", "model_config", "tokenizer")


def load_checkpoint(path: str | Path, need: tuple[str, ...] = MODEL_KEYS) -> dict:
    from wit_builder import storage
    if storage.is_remote(path):  # s3:// or gs://: read through a local copy
        import hashlib
        src = storage.location(path, "--checkpoint")
        if not src.exists():
            raise WitError(f"{src}: no such checkpoint")
        key = hashlib.sha256(str(src).encode()).hexdigest()[:16]
        path = storage.download_file(src, storage.cache_dir("checkpoints", key) / src.name)
    path = Path(path)
    if not path.is_file():
        raise WitError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WitError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WitError(f"{path}: not a wit-train checkpoint (no '{FORMAT}' format tag)")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise WitError(f"{path}: checkpoint lacks {', '.join(missing)} (cut short or edited?); "
                       "use an earlier copy, or start a new run with another --out")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[CLIP, CaptionTokenizer]:
    """The trained model (eval mode, CPU) and its tokenizer."""
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = CLIP(cfg)
    model.load_state_dict(ckpt["model"])
    tokenizer = CaptionTokenizer.from_str(ckpt["tokenizer"], cfg.context_length, source="checkpoint")
    return model.eval(), tokenizer


# Settings the optimizer and scheduler states carry: a resumed run would record the new
# value and keep training with the old one.
PINNED = ("lr", "weight_decay", "beta1", "beta2", "eps")


def check_resumable(ckpt: dict, cfg, path) -> None:
    """Refuse a resume that would not do what its settings say: a changed optimizer
    setting (PINNED), or --steps not beyond the steps already done."""
    old = ckpt["config"]
    changed = [k for k in PINNED if k in old and old[k] != getattr(cfg, k)]
    if changed:
        said = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)} (started with {old[k]})"
                         for k in changed)
        raise WitError(f"{said}: the checkpoint's optimizer state carries the old value; resume "
                       "without changing it, or start a new run with another --out")
    if cfg.steps < ckpt["step"]:
        raise WitError(f"--steps {cfg.steps}: {path} has already done {ckpt['step']} steps; give "
                       f"--steps above {ckpt['step']} to train on, or use the checkpoint as it is")


def check_same_model(ckpt: dict, want: ModelConfig, path) -> None:
    """A checkpoint only resumes into the model shape it was trained with."""
    have = ModelConfig.from_dict(ckpt["model_config"])
    if have != want:
        diff = [f"{k}: {v} in the checkpoint, {getattr(want, k)} asked for"
                for k, v in have.to_dict().items() if getattr(want, k) != v and k != "name"]
        raise WitError(f"{path} holds a '{have.name}' model, this run asks for '{want.name}'"
                       + (f" ({'; '.join(diff[:4])})" if diff else "")
                       + f"; pass --model {have.name} (and the same --image-size) to resume it, "
                       "or choose another --out to start afresh")


class RunFolder:
    """Where a run keeps checkpoint.pt, log.jsonl, config.json, tokenizer.json, curves.png.

    `--out` may be a local folder or a URL (s3://, gs://). A remote run works in a local
    mirror under ~/.cache/wit/train/ and puts its files to the URL at every checkpoint;
    resuming first fetches them, so a run can go on from another machine.
    """
    FILES = ("checkpoint.pt", "log.jsonl", "config.json", "tokenizer.json", "curves.png")

    def __init__(self, out: str):
        import hashlib

        from wit_builder import storage
        self.url = storage.location(out, "--out")
        self.remote = storage.is_remote(self.url)
        if self.remote:
            storage.check_reachable(self.url, "--out")
            key = hashlib.sha256(str(self.url).encode()).hexdigest()[:16]
            self.local = storage.cache_dir("train", key)
        else:
            self.local = Path(self.url)

    def __truediv__(self, name: str) -> Path:
        return self.local / name

    def where(self, name: str) -> str:
        """What the user should be told: the URL of a remote file, else the local path."""
        return str(self.url / name) if self.remote else str(self.local / name)

    def has_checkpoint(self) -> bool:
        return (self.url / "checkpoint.pt").exists()

    def fetch(self) -> None:
        """Bring the remote files down before resuming (the checkpoint decides)."""
        if not self.remote:
            return
        from wit_builder import storage
        for name in self.FILES:
            src = self.url / name
            (self.local / name).unlink(missing_ok=True)
            if src.exists():
                storage.download_file(src, self.local / name)

    def push(self) -> None:
        """Put the run's files to the remote --out (checkpoint last: it is the commit)."""
        if not self.remote:
            return
        for name in sorted(self.FILES, key=lambda n: n == "checkpoint.pt"):
            path = self.local / name
            if path.exists():
                self.url.fs.put_file(str(path), (self.url / name).path)
