"""Byte-level BPE for captions: trained with `tokenizers` on a build's captions, or loaded.

A caption becomes [start] tokens... [end] padded to the context length (77, as in CLIP);
a long caption is cut so that [end] is always present: the text tower pools there.
"""

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from wit_builder.errors import WitError

PAD, START, END = "<pad>", "<start_of_text>", "<end_of_text>"
# names other tokenizer.json files use for the same roles (CLIP, GPT-2, T5, BERT style)
START_NAMES = (START, "<|startoftext|>", "<s>", "<bos>", "[CLS]")
END_NAMES = (END, "<|endoftext|>", "</s>", "<eos>", "[SEP]")
PAD_NAMES = (PAD, "[PAD]")


class CaptionTokenizer:
    """Turns captions into a (N, context_length) LongTensor."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77, source: str = "tokenizer"):
        self.tokenizer, self.context_length = tokenizer, context_length
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.start_id = next((vocab[t] for t in START_NAMES if t in vocab), None)
        self.end_id = next((vocab[t] for t in END_NAMES if t in vocab), None)
        if self.end_id is None:
            raise WitError(f"{source}: no end-of-text token (one of {', '.join(END_NAMES)}); "
                           "the text tower pools at that token, so the tokenizer must have one")
        self.pad_id = next((vocab[t] for t in PAD_NAMES if t in vocab), 0)
        from .clip_tokenizer import clean, is_clip
        self.kind = "clip" if is_clip(tokenizer) else "bpe"
        self.clean = clean if self.kind == "clip" else None  # CLIP's: as open_clip cleans

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = [self.clean(t) for t in texts] if self.clean else list(texts)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        start = [] if self.start_id is None else [self.start_id]
        room = self.context_length - len(start) - 1
        out = torch.full((len(encodings), self.context_length), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(encodings):
            ids = start + enc.ids[:room] + [self.end_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str())

    @classmethod
    def from_str(cls, s: str, context_length: int = 77, source: str = "tokenizer") -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(s), context_length, source)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> "CaptionTokenizer":
        path = Path(path)
        if not path.is_file():
            raise WitError(f"--tokenizer {path}: no such file; give a tokenizer.json or leave it "
                           "empty to train one on the captions")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise WitError(f"--tokenizer {path}: not a `tokenizers` tokenizer.json ({e})") from None
        return cls(tok, context_length, source=str(path))


def tokenizer_kind(setting: str) -> str:
    """What a checkpoint records of --tokenizer: clip, build or file."""
    return setting if setting in ("clip", "build") else "file"


def check_same_tokenizer(ckpt: dict, setting: str) -> None:
    """A run resumes with the tokenizer it started with."""
    have = ckpt.get("tokenizer_kind")
    if have and have != "file" and tokenizer_kind(setting) != "file" and have != setting:
        raise WitError(f"the checkpoint was trained with --tokenizer {have}, this run asks for "
                       f"--tokenizer {setting}; pass --tokenizer {have} to resume it, or choose "
                       "another --out to start afresh")


def clip_bpe(context_length: int = 77) -> CaptionTokenizer:
    """CLIP's own 49,408-token BPE (open_clip's bundled vocabulary): ids as open_clip gives them."""
    from .clip_tokenizer import clip_tokenizer
    return CaptionTokenizer(clip_tokenizer(), context_length, source="CLIP's BPE")


def train_bpe(captions: Iterable[str], vocab_size: int, context_length: int = 77) -> CaptionTokenizer:
    """A byte-level BPE with `vocab_size` entries at most, normalised like CLIP (NFC, lowercase,
    collapsed whitespace). Fewer entries result when the captions have fewer frequent pairs."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
    ])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[PAD, START, END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(captions, trainer=trainer)
    return CaptionTokenizer(tok, context_length, source="trained BPE")
