"""WordNet synsets in Princeton format (data.noun, data.verb, data.adj, data.adv).

`--wordnet auto` looks in the places a system package or NLTK puts the dictionary:
/usr/share/wordnet (Debian's wordnet-base), $WNHOME/dict, and every NLTK data folder
($NLTK_DATA, ~/nltk_data, /usr/share/nltk_data, …) as corpora/wordnet/ or
corpora/wordnet.zip.
"""
from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Iterator

from wit_builder.errors import WitError

POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")   # data.adj: galore(ip), elect(p)


def _nltk_dirs() -> list[Path]:
    roots = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    roots += [Path.home() / "nltk_data", Path(sys.prefix) / "nltk_data",
              Path(sys.prefix) / "share" / "nltk_data", Path(sys.prefix) / "lib" / "nltk_data",
              Path("/usr/share/nltk_data"), Path("/usr/local/share/nltk_data"),
              Path("/usr/lib/nltk_data"), Path("/usr/local/lib/nltk_data")]
    return roots


def candidates() -> list[Path]:
    """Where `--wordnet auto` looks, in order."""
    out = [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet")]
    if os.environ.get("WNHOME"):
        out.append(Path(os.environ["WNHOME"]) / "dict")
    for root in _nltk_dirs():
        out += [root / "corpora" / "wordnet", root / "corpora" / "wordnet.zip"]
    return out


def _has_data(path: Path) -> bool:
    if path.is_dir():
        return (path / "data.noun").is_file()
    if path.suffix == ".zip" and path.is_file():
        try:
            with path.open("rb") as raw, zipfile.ZipFile(raw) as z:
                return any(n.endswith("/data.noun") or n == "data.noun" for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def find(setting: str) -> Path | None:
    """The WordNet folder (or NLTK zip) to use: a given path, the first one found for
    "auto", or None for "none" / nothing found."""
    if setting == "none":
        return None
    if setting == "auto":
        return next((p for p in candidates() if _has_data(p)), None)
    from wit_builder import storage
    path = storage.location(setting, "--wordnet")   # a folder, or a URL's prefix
    if not path.exists():
        raise WitError(f"--wordnet {setting}: no such folder; give the folder holding data.noun, "
                       "data.verb, data.adj and data.adv (Princeton format), or auto / none")
    if path.is_dir() and not _has_data(path) and _has_data(path / "dict"):
        path = path / "dict"   # a WordNet-3.0 source tree
    if not _has_data(path):
        raise WitError(f"--wordnet {setting}: no data.noun here; give the folder holding the "
                       "Princeton-format files data.noun, data.verb, data.adj, data.adv")
    return path


def _open_files(path: Path) -> Iterator[tuple[str, io.TextIOBase]]:
    if path.is_dir():
        for name in POS_FILES:
            if (path / name).is_file():
                with (path / name).open(encoding="utf-8", errors="replace") as f:
                    yield str(path / name), f
        return
    with path.open("rb") as raw, zipfile.ZipFile(raw) as z:
        names = {n.rsplit("/", 1)[-1]: n for n in z.namelist()}
        for name in POS_FILES:
            if name in names:
                with z.open(names[name]) as raw:
                    yield f"{path}:{names[name]}", io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def lemmas(path: Path, all_lemmas: bool = False) -> list[tuple[str, str]]:
    """(lemma with spaces, synset id like "n02084071") per synset: its first lemma, or
    every lemma with `all_lemmas`."""
    out = []
    for name, f in _open_files(path):
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue   # the license header
            fields = line.split(" ", 6)
            try:
                offset, pos, count = fields[0], fields[2], int(fields[3], 16)
                words = line.split(" ")[4:4 + 2 * count:2]
                if len(fields) < 6 or not offset.isdigit() or len(words) != count or count == 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise WitError(f"{name}: line {lineno} is not a WordNet synset line "
                               f"({line[:60].rstrip()!r}); give an unmodified Princeton-format "
                               "dictionary") from None
            for word in (words if all_lemmas else words[:1]):
                out.append((_ADJ_MARKER.sub("", word).replace("_", " "), pos[0] + offset))
    return out
