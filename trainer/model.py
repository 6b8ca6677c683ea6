"""CLIP as in Radford et al. 2021: an image tower, a causal text tower, and a learned temperature.

One class per block, read top to bottom:
  Attention, MLP, Block, Transformer        the pre-LN transformer both towers share
  VisionTransformer                         patch embedding, class token, ln_pre, blocks, ln_post, proj
  Bottleneck, AttentionPool2d, ModifiedResNet   the ResNet image tower with attention pooling
  TextTransformer                           causal; the ln_final activation at the EOS token is projected
  CLIP                                      both towers, L2-normalised features, logit scale
"""

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model. `vocab_size`, `eot_id` come from the tokenizer at build time."""

    name: str
    embed_dim: int  # the shared image-text space
    image_size: int
    vision: str  # "vit" or "resnet"
    vision_width: int  # ViT width, or the ResNet stem width
    vision_layers: int | tuple[int, int, int, int]
    vision_heads: int
    patch_size: int = 0  # ViT only
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    eot_id: int = 49407

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if isinstance(d["vision_layers"], list):
            d["vision_layers"] = tuple(d["vision_layers"])
        return cls(**d)


MODEL_SIZES = {
    # trains on a laptop CPU in minutes
    "tiny": ModelConfig("tiny", 128, 64, "vit", 128, 4, 4, patch_size=8,
                        text_width=128, text_heads=4, text_layers=4),
    "tiny-rn": ModelConfig("tiny-rn", 128, 64, "resnet", 16, (1, 1, 1, 1), 4,
                           text_width=128, text_heads=4, text_layers=4),
    "small": ModelConfig("small", 256, 128, "vit", 256, 6, 4, patch_size=16,
                         text_width=256, text_heads=4, text_layers=6),
    # the paper's shapes (Table 19, 20)
    "vit-b-32": ModelConfig("vit-b-32", 512, 224, "vit", 768, 12, 12, patch_size=32),
    "vit-b-16": ModelConfig("vit-b-16", 512, 224, "vit", 768, 12, 12, patch_size=16),
    "rn50": ModelConfig("rn50", 1024, 224, "resnet", 64, (3, 4, 6, 3), 32),
    "rn101": ModelConfig("rn101", 512, 224, "resnet", 64, (3, 4, 23, 3), 32),
}


# the paper's shapes: trained with CLIP's own tokenizer unless told otherwise, so that
# their numbers compare with other CLIP models'
CLIP_SIZES = ("vit-b-32", "vit-b-16", "rn50", "rn101")


def model_config(name: str, **overrides) -> ModelConfig:
    """The named size with `overrides` (e.g. vocab_size, image_size) applied."""
    return replace(MODEL_SIZES[name], **overrides)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.proj(self.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, causal) for _ in range(layers))
        # CLIP's init: residual projections scaled down with depth
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        for b in self.blocks:
            nn.init.normal_(b.attn.qkv.weight, std=attn_std)
            nn.init.normal_(b.attn.proj.weight, std=proj_std)
            nn.init.normal_(b.mlp.fc.weight, std=fc_std)
            nn.init.normal_(b.mlp.proj.weight, std=proj_std)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)  # the paper's one change to the standard ViT
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, out_dim))

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # B, patches, width
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet-D bottleneck: strided convs replaced by an avgpool before them (anti-aliasing)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        nn.init.zeros_(self.bn3.weight)  # each block starts as the identity
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("pool", nn.AvgPool2d(stride)),
                ("conv", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("bn", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """One multi-head attention layer whose query is the mean of the feature map."""

    def __init__(self, grid: int, width: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) / width**0.5)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, out_dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(lin.weight, std=width**-0.5)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # B, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        B, T, C = x.shape
        heads = lambda t: t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # noqa: E731
        q = heads(self.q_proj(x[:, :1]))
        y = F.scaled_dot_product_attention(q, heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(y.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, avgpool downsampling and attention pooling (CLIP's RN50)."""

    def __init__(self, layers: tuple, width: int, heads: int, image_size: int, out_dim: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AvgPool2d(2),
        )
        stages, inplanes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, out_dim)

    def forward(self, images):
        return self.attnpool(self.stages(self.stem(images)))


class TextTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eot_id = cfg.eot_id
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, causal=True)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.text_width**-0.5)

    def forward(self, tokens):
        """tokens: (B, T), T <= context_length; each row holds one EOT token.

        The mask is causal, so padding after the longest EOT in a batch can be cut away
        beforehand without changing any feature.
        """
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        eot = (tokens == self.eot_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.vision == "vit":
            self.visual = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_width,
                                            cfg.vision_layers, cfg.vision_heads, cfg.embed_dim)
        else:
            self.visual = ModifiedResNet(cfg.vision_layers, cfg.vision_width, cfg.vision_heads,
                                         cfg.image_size, cfg.embed_dim)
        self.text = TextTransformer(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images, normalize: bool = True):
        f = self.visual(images)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens, normalize: bool = True):
        f = self.text(tokens)
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, images, tokens):
        """L2-normalised image and text features and the (exponentiated) logit scale."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self):
        """The paper clips the temperature so logits are never scaled by more than 100."""
        self.logit_scale.clamp_(0, math.log(100))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
