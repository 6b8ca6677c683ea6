"""Files: atomic writes, checked Parquet reads, input discovery."""
from __future__ import annotations

import contextlib
import glob as _glob
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import WitError


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (readers never see half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WitError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise WitError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None


def expand_inputs(patterns: list[str], what: str, flag: str,
                  suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Expand files, directories and globs into a sorted list of absolute file paths.

    Raises WitError naming the flag when a pattern matches nothing.
    """
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat).expanduser()
        if any(ch in pat for ch in "*?["):
            hits = [Path(h) for h in sorted(_glob.glob(str(p), recursive=True))]
        elif p.is_dir():
            hits = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith((".", "_")))
        elif p.exists():
            hits = [p]
        else:
            raise WitError(f"{flag} {pat}: no such file or directory; give the path of the {what}")
        if suffixes is not None:
            hits = [h for h in hits if h.is_file() and h.name.lower().endswith(suffixes)]
        if not hits:
            raise WitError(f"{flag} {pat}: matches no {what} files"
                           + (f" (looked for {', '.join(suffixes)})" if suffixes else ""))
        out.extend(h.absolute() for h in hits)  # Ray workers need not share our cwd
    return out


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


def file_fingerprint(paths: list[Path]) -> list[list[Any]]:
    """(path, size, mtime) per input file: a stage reruns when its inputs change."""
    return [[str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)] for p in paths]


def uid_of(url: str, text: str) -> str:
    """The stable id of a (url, text) pair: 16 hex chars of blake2b over both."""
    import hashlib
    return hashlib.blake2b(f"{url}\x00{text}".encode("utf-8", "surrogatepass"),
                           digest_size=8).hexdigest()


def uids(urls, texts) -> "list[str]":
    """uid_of over two equal-length sequences (pyarrow arrays or lists)."""
    import pyarrow as pa
    if isinstance(urls, (pa.Array, pa.ChunkedArray)):
        urls = urls.to_pylist()
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    return [uid_of(u, t) for u, t in zip(urls, texts)]
