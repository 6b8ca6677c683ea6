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


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WitError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WitError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WitError(f"{path}: not a wit-train checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[CLIP, CaptionTokenizer]:
    """The trained model (eval mode, CPU) and its tokenizer."""
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = CLIP(cfg)
    model.load_state_dict(ckpt["model"])
    tokenizer = CaptionTokenizer.from_str(ckpt["tokenizer"], cfg.context_length, source="checkpoint")
    return model.eval(), tokenizer


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
