"""Files: atomic writes, checked Parquet reads, input discovery, plain lists (the
opt-out and takedown lists: `read_list`, `digest`)."""
from __future__ import annotations

import contextlib
import glob as _glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from wit_builder.errors import WitError
from wit_builder.storage import read_json, write_json  # noqa: F401  (one JSON reader and writer)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to `dest` (file or dir)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def expand_inputs(patterns: list[str], what: str, flag: str,
                  suffixes: tuple[str, ...] | None = None) -> list:
    """Expand files, directories and globs (paths or URLs) into a sorted list of
    locations: absolute local Paths, or UPaths for s3://, gs:// and other URLs.

    Raises WitError naming the flag when a pattern matches nothing.
    """
    from wit_builder import storage
    out: list = []
    for pat in patterns:
        if storage.scheme(pat):
            hits = _expand_remote(pat, what, flag)
        else:
            p = Path(pat[len("file://"):] if pat.startswith("file://") else pat).expanduser()
            if any(ch in pat for ch in "*?["):
                hits = [Path(h) for h in sorted(_glob.glob(str(p), recursive=True))]
            elif p.is_dir():
                hits = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith((".", "_")))
            elif p.exists():
                hits = [p]
            else:
                raise WitError(f"{flag} {pat}: no such file or directory; give the path of the {what}")
            hits = [h.absolute() for h in hits]  # Ray workers need not share our cwd
        if suffixes is not None:
            hits = [h for h in hits if h.is_file() and h.name.lower().endswith(suffixes)]
        if not hits:
            raise WitError(f"{flag} {pat}: matches no {what} files"
                           + (f" (looked for {', '.join(suffixes)})" if suffixes else ""))
        out.extend(hits)
    return out


def _expand_remote(pat: str, what: str, flag: str) -> list:
    from wit_builder import storage
    base = storage.location(pat, flag)
    storage.check_reachable(base, flag)
    fs, proto = base.fs, pat.split("://", 1)[0]
    if any(ch in pat for ch in "*?["):
        names = sorted(fs.glob(base.path))
    elif fs.isdir(base.path):
        names = sorted(n for n in fs.find(base.path)
                       if not n.rsplit("/", 1)[-1].startswith((".", "_")))
    elif fs.exists(base.path):
        names = [base.path]
    else:
        raise WitError(f"{flag} {pat}: no such object or prefix; give the URL of the {what}")
    return [storage.location(f"{proto}://{n}", flag) for n in names]


def file_fingerprint(paths: list) -> list[list[Any]]:
    """(path, size, mtime or ETag) per input file: a stage reruns when its inputs change."""
    from wit_builder import storage
    out = []
    for p in paths:
        if storage.is_remote(p):
            info = p.fs.info(p.path)
            version = info.get("ETag") or info.get("etag") or info.get("md5Hash") or str(
                info.get("LastModified") or info.get("mtime") or info.get("updated") or "")
            out.append([str(p), int(info.get("size") or 0), str(version).strip('"')])
        else:
            st = Path(p).stat()
            out.append([str(Path(p).resolve()), st.st_size, int(st.st_mtime)])
    return out


def open_input(path, mode: str = "rb"):
    """Open an input file (local Path or remote UPath) for reading."""
    from wit_builder import storage
    if storage.is_remote(path):
        return path.fs.open(path.path, mode)
    return open(path, mode)


def read_parquet_checked(path: str | os.PathLike, columns: list[str] | None = None):
    """Read a Parquet file, turning a malformed file into a WitError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.exists():
        raise WitError(f"{path}: file not found")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise WitError(f"{path}: not a readable Parquet file ({e}); rewrite it or remove it") from None
    except KeyError as e:
        raise WitError(f"{path}: missing column {e}") from None


UID_BYTES = 16


def uid_of(url: str, text: str) -> str:
    """The stable id of a (url, text) pair: 32 hex chars (128 bits, DataComp's width) of
    blake2b over both. 64 bits collided about three times in 10^10 pairs; 128 bits do not
    within any pool, and the pool stage still gives a colliding pair a fresh uid."""
    import hashlib
    return hashlib.blake2b(f"{url}\x00{text}".encode("utf-8", "surrogatepass"),
                           digest_size=UID_BYTES).hexdigest()


def uids(urls, texts) -> "list[str]":
    """uid_of over two equal-length sequences (pyarrow arrays or lists)."""
    import pyarrow as pa
    if isinstance(urls, (pa.Array, pa.ChunkedArray)):
        urls = urls.to_pylist()
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    return [uid_of(u, t) for u, t in zip(urls, texts)]


def read_list(path: str, flag: str, domains: bool) -> list[str]:
    """The entries of a plain list file: one per line, blank lines and `#` comments
    skipped; domains are lower-cased with any leading `*.` or `.` removed."""
    from wit_builder import storage
    loc = storage.location(path)
    if not loc.exists():
        raise WitError(f"{flag} {path}: no such file; give a plain list, one entry a line")
    try:
        text = loc.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise WitError(f"{flag} {path}: not UTF-8 text (byte {e.start}); give a plain list") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip() if domains else line.strip()
        if not entry or entry.startswith("#"):
            continue
        if domains:
            entry = entry.lower().lstrip("*").lstrip(".")
            if not entry or "/" in entry or " " in entry:
                raise WitError(f"{flag} {path} line {n}: {line.strip()!r} is no domain "
                               "(give e.g. example.com, which also excludes its subdomains)")
        out.append(entry)
    return out


def digest(entries: list[str]) -> str:
    """A short hash of a list's entries: part of fetch's parameters, so a changed list
    fetches again."""
    import hashlib
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
