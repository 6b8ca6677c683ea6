"""CLIP's tokenizer: the 49,408-token BPE of Radford et al. 2021, from open_clip's bundled vocabulary.

Built as a `tokenizers` BPE (byte-level symbols, `</w>` at each word's end, CLIP's
word-splitting pattern) so that it serialises into checkpoints like a trained one. The
text is cleaned first exactly as open_clip's `SimpleTokenizer` cleans it (ftfy, HTML
entities, whitespace, lower case), so ids are the ones `open_clip.tokenize` gives.
Nothing is downloaded: the vocabulary ships inside the open_clip_torch package.
"""

import gzip
import json

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

START, END = "<start_of_text>", "<end_of_text>"
VOCAB_SIZE = 49408
MERGES = VOCAB_SIZE - 256 * 2 - 2  # 48,894 merges after 512 byte symbols, before 2 specials
# CLIP's word pattern, less the special tokens (added tokens in `tokenizers`)
WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    from open_clip.tokenizer import bytes_to_unicode
    return bytes_to_unicode()


def clip_tokenizer() -> Tokenizer:
    """The `tokenizers` form of open_clip's SimpleTokenizer (ids 0..49407; 49406 starts,
    49407 ends a caption)."""
    from open_clip.tokenizer import default_bpe
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                     end_of_word_suffix="</w>", unk_token=None, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.add_special_tokens([START, END])
    return tok


def is_clip(tok: Tokenizer) -> bool:
    """Whether `tok` is CLIP's BPE (its texts then get CLIP's cleaning first)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    if len(vocab) != VOCAB_SIZE or vocab.get(START) != VOCAB_SIZE - 2 or vocab.get(END) != VOCAB_SIZE - 1:
        return False
    return json.loads(tok.to_str())["model"].get("end_of_word_suffix") == "</w>"


def clean(text: str) -> str:
    """open_clip's cleaning for its default tokenizer: ftfy, HTML entities, whitespace, lower case."""
    from open_clip.tokenizer import _clean_lower
    return _clean_lower(text)
