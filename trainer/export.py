"""`wit-train export CHECKPOINT OUT --format open_clip`: a wit model as open_clip loads it.

wit's CLIP is the paper's, as open_clip's is; only the parameter names differ (and where
the ResNet's layers sit). OUT receives what open_clip's `local-dir:` schema reads:

    open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}: a custom config
    open_clip_model.safetensors the state dict under open_clip's names
    tokenizer.json              the checkpoint's tokenizer (wit's CaptionTokenizer reads it)

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:OUT")

With CLIP's tokenizer (`--tokenizer clip`) the model is a drop-in open_clip model: its
config for `vit-b-32` / `rn50` is open_clip's `ViT-B-32` / `RN50`, and open_clip's own
tokenizer gives its token ids. With a build-trained BPE the text side needs wit's
tokenizer (tokenizer.json): open_clip pools at that tokenizer's end token (`eos`).
"""

import json
import re
from pathlib import Path

import torch

from wit_builder.errors import WitError

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import MEAN, STD
from .model import CLIP, ModelConfig

FORMATS = ("open_clip",)
WEIGHTS = "open_clip_model.safetensors"
# transformer block names, wit -> open_clip (applied in order)
_BLOCK = [(r"\.blocks\.(\d+)\.", r".resblocks.\1."), (r"\.attn\.qkv\.", ".attn.in_proj_"),
          (r"\.attn\.proj\.", ".attn.out_proj."), (r"\.mlp\.fc\.", ".mlp.c_fc."),
          (r"\.mlp\.proj\.", ".mlp.c_proj.")]
_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def open_clip_name(name: str) -> str:
    """The open_clip name of one wit parameter or buffer."""
    if name.startswith("text."):
        name = name[len("text."):]
    name = name.replace("visual.patch_embed.", "visual.conv1.")
    m = re.match(r"visual\.stem\.(\d+)\.(.*)", name)
    if m:
        return f"visual.{_STEM[m.group(1)]}.{m.group(2)}"
    name = re.sub(r"^visual\.stages\.(\d+)\.", lambda m: f"visual.layer{int(m.group(1)) + 1}.", name)
    name = name.replace(".downsample.conv.", ".downsample.0.").replace(".downsample.bn.", ".downsample.1.")
    for pattern, repl in _BLOCK:
        name = re.sub(pattern, repl, name)
    return name


def open_clip_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers under open_clip's names."""
    return {open_clip_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def open_clip_config(cfg: ModelConfig, eot_is_largest: bool) -> dict:
    """open_clip's model_cfg for a wit ModelConfig (heads expressed as head_width)."""
    if cfg.vision == "vit":
        vision = {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                  "patch_size": cfg.patch_size, "head_width": cfg.vision_width // cfg.vision_heads}
    else:  # open_clip: heads = width * 32 // head_width
        vision = {"image_size": cfg.image_size, "layers": list(cfg.vision_layers),
                  "width": cfg.vision_width, "head_width": cfg.vision_width * 32 // cfg.vision_heads}
    text = {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size,
            "width": cfg.text_width, "heads": cfg.text_heads, "layers": cfg.text_layers}
    if not eot_is_largest:  # open_clip's default pools at the largest id: CLIP's end token
        text.update(pool_type="eos", eos_id=cfg.eot_id)
    return {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text}


def export_open_clip(checkpoint, out) -> Path:
    """Write OUT/open_clip_config.json, OUT/open_clip_model.safetensors, OUT/tokenizer.json."""
    from safetensors.torch import save_file
    model, tokenizer = model_from_checkpoint(load_checkpoint(checkpoint))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WitError(f"{out}: exists and is not an empty folder; give a new OUT")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    config = {"model_cfg": open_clip_config(cfg, cfg.eot_id == cfg.vocab_size - 1),
              "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                 "resize_mode": "shortest"},
              "wit": {"model": cfg.name, "tokenizer": tokenizer.kind}}
    save_file(open_clip_state_dict(model), str(out / WEIGHTS))
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(out / "tokenizer.json")
    return out


def export(checkpoint, out, fmt: str = "open_clip") -> Path:
    if fmt not in FORMATS:
        raise WitError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    return export_open_clip(checkpoint, out)
