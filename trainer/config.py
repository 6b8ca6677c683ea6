"""TrainConfig: every knob of a run. Field names are the TOML keys; flags are the same with dashes.

Precedence: the defaults below < a TOML file (--config) < flags on the command line.
The defaults run on a 2-core laptop CPU. A TOML value is read by the same rules as a
recipe's `[train]` table (`wit_builder.config.coerce`).
"""

import argparse
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from wit_builder.config import at_least, check_fields, coerce, one_of
from wit_builder.errors import WitError

from .model import CLIP_SIZES, MODEL_SIZES


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


def _device_problem(device: str) -> str | None:
    ok = device in ("auto", "cpu") or device.startswith("cuda")
    return None if ok else "use auto, cpu, cuda or cuda:N"


@dataclass
class TrainConfig:
    data: list[str] = _f((), "BUILD_DIR (its shards/*.tar), shard files, globs or brace patterns "
                             "like 'shards/{00000..00099}.tar'", nargs="+")
    out: str = _f("wit-train", "run directory: checkpoint.pt, tokenizer.json, log.jsonl, curves.png")
    model: str = _f("tiny", "model size: " + ", ".join(MODEL_SIZES), check=one_of(tuple(MODEL_SIZES)))
    image_size: int = _f(0, "image side in pixels; 0 = the model size's own", check=at_least(0))
    tokenizer: str = _f("", "clip: CLIP's 49,408-token BPE (comparable with other CLIP models); "
                            "build: a byte-level BPE trained on the captions; or a tokenizer.json; "
                            "empty = clip for the paper's sizes (" + ", ".join(CLIP_SIZES) + "), "
                            "build for the others")
    vocab_size: int = _f(49408, "BPE vocabulary size when training the tokenizer (--tokenizer build)",
                         check=at_least(300, "byte-level BPE: 256 bytes, 3 special tokens and some merges"))
    tokenizer_captions: int = _f(1_000_000, "captions read to train the tokenizer, at most",
                                 check=at_least(1))
    batch_size: int = _f(32, "pairs per step on each process (the global batch is this x processes)",
                         check=at_least(2, "a contrastive batch"))
    steps: int = _f(1000, "optimizer steps; the schedule spans them", check=at_least(1))
    lr: float = _f(5e-4, "peak learning rate")
    warmup: int = _f(100, "linear warmup steps, then cosine decay to 0", check=at_least(0))
    weight_decay: float = _f(0.2, "AdamW decay on weights (never on gains, biases, logit scale)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.98, "AdamW beta2")
    eps: float = _f(1e-6, "AdamW epsilon")
    grad_clip: float = _f(1.0, "clip the gradient norm to this; 0 = off")
    workers: int = _f(2, "DataLoader worker processes per process", check=at_least(0))
    shuffle_buffer: int = _f(1000, "samples in each worker's shuffle buffer", check=at_least(1))
    resample: bool = _f(False, "draw shards with replacement (always on when there are fewer "
                               "shards than processes x workers)")
    trim_text: bool = _f(True, "cut each batch's padding after its longest caption (exact: the text "
                               "tower is causal)")
    seed: int = _f(0, "seeds the model init and the data order")
    device: str = _f("auto", "auto (CUDA when present), cpu, cuda or cuda:N", check=_device_problem)
    precision: str = _f("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32", choices=("auto", "bf16", "fp32"))
    compile: bool = _f(False, "torch.compile the model")
    threads: int = _f(0, "torch CPU threads; 0 = torch's default", check=at_least(0))
    checkpoint_every: int = _f(500, "write checkpoint.pt every N steps (and at the end)",
                               check=at_least(0))
    log_every: int = _f(10, "append a log.jsonl record every N steps", check=at_least(1))
    resume: str = _f("", "continue from a checkpoint: a path, or bare --resume for OUT/checkpoint.pt",
                     nargs="?", const="auto")
    stop_after: int = _f(0, "stop with a checkpoint after N steps of this invocation (time-boxed jobs); "
                            "0 = run to --steps", check=at_least(0))
    max_minutes: float = _f(0.0, "stop with a checkpoint after this many minutes of this invocation "
                                  "(a time-boxed run; --resume continues); 0 = no limit",
                            check=at_least(0))
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> "TrainConfig":
        """Each field's own check (bounds, names: on the field, as every wit Config
        does), then what needs several fields or a default that depends on another."""
        check_fields(self)
        if not self.data:
            raise WitError("--data is required: a build directory or shard files/patterns")
        if not self.tokenizer:
            self.tokenizer = "clip" if self.model in CLIP_SIZES else "build"
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"] = list(d["data"])
        return d


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are left out so a TOML file can supply them."""
    parser.add_argument("--config", metavar="TOML", help="a TOML file of TrainConfig fields (flags win)")
    for f in fields(TrainConfig):
        flag, kw = "--" + f.name.replace("_", "-"), dict(dest=f.name, default=argparse.SUPPRESS)
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kw)
            continue
        extra = {k: v for k, v in f.metadata.items() if k in ("nargs", "const", "choices")}
        kind = f.type if f.type in (int, float) else str
        parser.add_argument(flag, type=kind, help=help_text, **extra, **kw)


def load_toml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise WitError(f"--config {path}: no such file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise WitError(f"--config {path}: not valid TOML ({e})") from None
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise WitError(f"--config {path}: unknown key {key!r}; keys are TrainConfig fields "
                           f"(see wit-train train --help)")
        # the same rules as a recipe's [train] table (wit_builder.config.coerce): "100" is
        # 100, true is not 1, 1.9 is not an int, NaN and infinity are refused
        out[name] = coerce(TrainConfig, name, value, f"--config {path}")
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_toml(args.config) if getattr(args, "config", None) else {}
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    try:
        return TrainConfig(**values).validate()
    except TypeError as e:
        raise WitError(f"bad configuration: {e}") from None
