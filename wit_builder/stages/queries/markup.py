"""Wikitext -> the plain text a reader sees: the markup passes run on each chunk of a
dump before it is tokenised (RE2 through pyarrow: one scan of the chunk per pass, no
Python loop over characters). The rules, in order, are in docs/queries.md."""
from __future__ import annotations

import html
import re

# Tags whose content is not prose: removed with it.
DROP_TAGS = ("math chem ce gallery timeline graph mapframe maplink score syntaxhighlight source "
             "templatedata imagemap hiero pre code references inputbox categorytree includeonly")
# Block tags end a line.
BLOCK_TAGS = ("br p div li ul ol dl dd dt table caption thead tbody tfoot tr td th blockquote "
              "center h1 h2 h3 h4 h5 h6 hr poem")
# Inline tags vanish without a trace: CO<sub>2</sub> is one word, as on the page.
INLINE_TAGS = ("sub sup small big span i b u s strike abbr acronym nowiki font code var mark ins "
               "del q cite em strong tt kbd samp dfn bdi bdo wbr data time")
# Links in these namespaces (any case) are removed with their captions: the canonical
# names, MediaWiki's aliases and those of the largest Wikipedias.
FILE_NAMESPACES = ("file image media datei bild medium fichier média archivo imagen immagine "
                   "ficheiro arquivo imagem bestand afbeelding plik grafika fil файл изображение "
                   "ファイル 画像 文件 檔案 图像 圖像")
CATEGORY_NAMESPACES = ("category kategorie catégorie categoría categoria categorie kategoria "
                       "kategori категория カテゴリ 分类 分類")

_NS = "|".join((FILE_NAMESPACES + " " + CATEGORY_NAMESPACES).split())
_FILE_NS = "|".join(FILE_NAMESPACES.split())
_ATTRS = r"(?:\s[^<>\x00]*)?"
_GALLERY_LINE = rf"[ \t|]*(?i:{_FILE_NS})[ \t]*:[^\n|\[\]]*\.[a-zA-Z0-9]{{2,5}}[ \t]*(?:\|[^\n]*)?"

# Steps, applied in this order: (passes, repeat). A pass is (pattern, replacement); a
# repeated step reruns each pass until it changes nothing, and the passes in turn until
# none of them does.
MARKUP_STEPS: list[tuple[list[tuple[str, str]], bool]] = [
    # comments, references and tags whose content is not prose
    ([("(?i)" + "|".join([r"<!--[^\x00]*?-->", r"<ref\s[^>\x00]*/>",
                          r"<ref(?:\s[^>\x00]*)?>[^\x00]*?</ref\s*>"]
                         + [rf"<{t}(?:\s[^>\x00]*)?>[^\x00]*?</{t}\s*>" for t in DROP_TAGS.split()]),
       " "),
      (r"\{\{!\}\}", "|")], False),           # {{!}} is a pipe: tables inside templates use it
    # templates and tables, innermost first, in turn: each may hold the other
    ([(r"\{\{[^{}\x00]*\}\}", " "),
      (r"\{\|(?:[^{\x00]|\{+[^{|\x00])*?\|\}", "\n")], True),
    # links: mark file, category and interlanguage links; keep the text of the others
    ([(rf"\[\[\s*(?:(?i:{_NS})|[a-z]{{2,3}}(?:-[a-z]{{2,12}})*)\s*:", "\x01"),
      (r"\[\[(?:[^\[\]|\x00\x01]*\|)?([^\[\]\x00\x01]*)\]\]", r"\1")], False),
    # a marked link goes whole, with [single brackets] in its caption; innermost first
    ([(r"\x01(?:[^\x01\[\]\x00]|\[[^\[\]\x00]*\])*\]\]", " ")], True),
    # gallery lines outside a <gallery> tag (File:Name.jpg|caption) go whole (a line
    # after "\n", and the first line: much faster in RE2 than one pass with "^")
    ([(rf"(?m)\n{_GALLERY_LINE}$", "\n"), (rf"(?m)\A{_GALLERY_LINE}$", "")], False),
    # external links keep their label; bare URLs go
    ([(r"\[(?:(?:https?|ftp|news):)?//[^\s\]\x00]*\s*([^\]\x00]*)\]|\[mailto:[^\s\]\x00]*\s*([^\]\x00]*)\]"
       r"|(?:https?|ftp)://[^\s<>\[\]\x00|\"]*", r" \1\2 ")], False),
    # HTML tags: block tags end a line, inline tags and emphasis vanish, others are a space
    ([(rf"(?i)</?(?:{'|'.join(BLOCK_TAGS.split())}){_ATTRS}/?>", "\n"),
      (rf"(?i)</?(?:{'|'.join(INLINE_TAGS.split())}){_ATTRS}/?>|'{{2,}}", ""),
      (r"</?[a-zA-Z][^>\x00\n]*>|__[A-Z]+__|\{\{|\}\}|\{\||\|\}|\[\[|\]\]|\x01", " ")], False),
]
_ENTITY = re.compile(rb"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")
_DECODED: dict[bytes, bytes] = {}


def as_array(data: bytes):
    """Bytes as a one-row Arrow large_string array (no copy unless UTF-8 is broken)."""
    import pyarrow as pa
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    arr = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:   # broken UTF-8: replace what cannot be decoded
        return as_array(data.decode("utf-8", "replace").encode())
    return arr


def as_bytes(arr) -> bytes:
    """The first row of a large_string array as bytes."""
    import numpy as np
    off = np.frombuffer(arr.buffers()[1], np.int64, count=2, offset=8 * arr.offset)
    return bytes(memoryview(arr.buffers()[2])[off[0]:off[1]])


def _run_step(arr, passes: list[tuple[str, str]], repeat: bool):
    import pyarrow.compute as pc
    if not repeat:
        for pattern, replacement in passes:
            arr = pc.replace_substring_regex(arr, pattern, replacement)
        return arr
    i = idle = 0   # idle: passes in a row that changed nothing
    for _ in range(64 * len(passes)):
        before = pc.binary_length(arr)[0]
        arr = pc.replace_substring_regex(arr, *passes[i])
        if pc.binary_length(arr)[0] != before:   # every pass shortens what it changes
            idle = 0
            continue
        idle += 1
        if idle == len(passes):
            break
        i = (i + 1) % len(passes)
    return arr


def strip_markup(data: bytes) -> bytes:
    """Wikitext -> plain text: templates, refs, tables, comments, file/category links and
    markup removed, link text kept. Pages may be joined by NUL bytes; nothing spans them."""
    arr = as_array(data)
    for passes, repeat in MARKUP_STEPS:
        arr = _run_step(arr, passes, repeat)
    out = as_bytes(arr)
    return _ENTITY.sub(_decode_entity, out) if b"&" in out else out


def _decode_entity(m: re.Match) -> bytes:
    """An HTML entity as UTF-8: a lookup for all but the first of each kind (a chunk has
    tens of thousands of entities, mostly &nbsp; and a few others)."""
    entity = m.group()
    char = _DECODED.get(entity)
    if char is None:
        char = html.unescape(entity.decode()).encode()
        if len(_DECODED) < 100_000:
            _DECODED[entity] = char
    return char
