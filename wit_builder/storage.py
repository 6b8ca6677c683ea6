"""Storage: every path the user gives is a URL — local, file://, s3://, gs:// — over fsspec.

A location is a `upath.UPath`: a pathlib-like object over an fsspec filesystem. Local
paths are plain `pathlib.Path` subclasses, so local builds take the same code path
with no cost. Credentials come the way each filesystem takes them (AWS_* variables,
~/.aws, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS); `--storage-options JSON`
(or WIT_STORAGE_OPTIONS) adds filesystem options for every remote URL of a command.

Object stores have no atomic rename of a folder, so nothing here relies on one: a
stage writes under a run-scoped prefix and its record, written last in one PUT, is
the commit (see wit_builder/build/stage.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from wit_builder.errors import WitError

OPTIONS_ENV = "WIT_STORAGE_OPTIONS"
# Filesystem packages a URL scheme needs, for the "install it" message.
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}
_options: dict[str, Any] | None = None


def set_options(text: str | dict | None, flag: str = "--storage-options") -> None:
    """Set the filesystem options for remote URLs (a JSON object), process-wide."""
    global _options
    if text is None:
        _options = None
        return
    if isinstance(text, dict):
        _options = dict(text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise WitError(f"{flag} {text!r}: not JSON ({e.msg}); give an object such as "
                           '\'{"endpoint_url": "http://127.0.0.1:9000"}\'') from None
        if not isinstance(value, dict):
            raise WitError(f"{flag}: give a JSON object, not {type(value).__name__}")
        _options = value
    os.environ[OPTIONS_ENV] = json.dumps(_options)  # Ray workers inherit it


def options() -> dict[str, Any]:
    if _options is not None:
        return dict(_options)
    raw = os.environ.get(OPTIONS_ENV)
    if raw:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise WitError(f"{OPTIONS_ENV}: not a JSON object; unset it or fix it") from None
        return value if isinstance(value, dict) else {}
    return {}


def scheme(url: str | os.PathLike) -> str:
    """'' for a local path (plain or file://), else the URL's protocol."""
    s = str(url)
    if "://" not in s:
        return ""
    proto = s.split("://", 1)[0].lower()
    return "" if proto in ("file", "local") else proto


def is_remote(path: str | os.PathLike) -> bool:
    from upath import UPath
    if isinstance(path, UPath):
        return path.protocol not in ("", "file", "local")
    return bool(scheme(path))


def location(url: str | os.PathLike, flag: str = "--out"):
    """The UPath for a user-given URL or path; local paths become absolute.

    Ray workers need not share our working directory, so a relative path never leaves
    the driver. Raises WitError when the scheme's filesystem is not installed.
    """
    from upath import UPath
    if isinstance(url, UPath) and is_remote(url):
        return url
    text = os.fspath(url) if not isinstance(url, str) else url
    proto = scheme(text)
    if not proto:
        if text.startswith("file://"):
            text = text[len("file://"):]
        elif text.startswith("local://"):
            text = text[len("local://"):]
        return UPath(Path(text).expanduser().absolute())
    try:
        import fsspec
        fsspec.get_filesystem_class(proto)
    except (ImportError, ValueError) as e:
        pkg = PACKAGES.get(proto)
        hint = f"install {pkg} (pip install {pkg})" if pkg else "use a local path, s3:// or gs://"
        raise WitError(f"{flag} {text}: no filesystem for {proto}:// is installed; {hint}"
                       + (f" ({e})" if not pkg else "")) from None
    opts = options()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if proto in ("s3", "s3a") and endpoint and "endpoint_url" not in opts:
        opts["endpoint_url"] = endpoint  # tasks on other nodes reach the same store
    if proto in ("s3", "s3a", "gs", "gcs"):
        # Other processes (Ray tasks, other machines) write into the build: a cached
        # listing would hide their files, so every listing asks the store.
        opts.setdefault("use_listings_cache", False)
    return UPath(text.rstrip("/"), **opts)


def child(base, *parts: str):
    """base / parts, for a UPath or a plain path string."""
    out = location(base) if not hasattr(base, "joinpath") else base
    for p in parts:
        out = out / p
    return out


def rel(base, path) -> str:
    """`path` relative to `base` (both UPaths of one filesystem)."""
    b, p = str(base).rstrip("/"), str(path)
    if not p.startswith(b + "/") and p != b:
        raise ValueError(f"{p} is not under {b}")
    return p[len(b) + 1:]


def sql_path(path) -> str:
    """A path or URL as a quoted SQL string literal for DuckDB."""
    from wit_builder.sql import literal
    return literal(path)


def register(con, *paths) -> None:
    """Let DuckDB read and write the remote URLs among `paths` through fsspec.

    DuckDB's own httpfs extension cannot be installed offline; a registered fsspec
    filesystem needs nothing but the Python package. Extension auto-loading is off so
    DuckDB never tries to download httpfs for an s3:// path.
    """
    done = set()
    for p in paths:
        if not is_remote(p):
            continue
        fs = p.fs
        key = (type(fs).__name__, fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0])
        if key in done or key[1] in con.list_filesystems():
            continue  # one filesystem per protocol: the build's and the inputs' may share it
        done.add(key)
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.register_filesystem(fs)


def check_reachable(path, flag: str = "--out", create: bool = False) -> None:
    """One request to prove a remote location answers; a WitError line if not.

    Names the URL and what to set: credentials, endpoint, bucket. Local paths: nothing.
    """
    if not is_remote(path):
        return
    bucket = str(path).split("://", 1)[1].split("/", 1)[0]
    proto = path.protocol if isinstance(path.protocol, str) else path.protocol[0]
    try:
        path.fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise WitError(f"{flag} {path}: the bucket {bucket} does not exist (or is not visible "
                       f"with these credentials); create it or check the name") from None
    except PermissionError as e:
        raise WitError(f"{flag} {path}: access denied to {proto}://{bucket} ({_short(e)}); check "
                       "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                       "~/.aws, GOOGLE_APPLICATION_CREDENTIALS) or --storage-options") from None
    except Exception as e:  # the filesystems raise their clients' own types
        raise WitError(f"{flag} {path}: cannot reach the store ({_short(e)}); "
                       + _hint(e)) from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _hint(e: BaseException) -> str:
    name = type(e).__name__
    text = str(e)
    if "Credentials" in name or "credentials" in text.lower():
        return ("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE), or pass them in --storage-options")
    if "Endpoint" in name or "connect" in text.lower() or "Connection" in name:
        return ("check AWS_ENDPOINT_URL / --storage-options endpoint_url and that the server "
                "is running")
    if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "Forbidden" in text:
        return "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    return "check the URL, the credentials and --storage-options"


def write_bytes(path, data: bytes) -> None:
    """Write a whole object in one PUT; locally, atomically (a temporary file renamed)."""
    if is_remote(path):
        with path.fs.open(path.path, "wb") as f:
            f.write(data)
        return
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(dest) -> Iterator[Path]:
    """A local file to write; on success it becomes `dest`, whole or not at all.

    Locally a hidden sibling renamed over `dest`; remote a temporary file put in one
    request (a reader sees the old object or the new one, never half of it).
    """
    if is_remote(dest):
        fd, name = tempfile.mkstemp(prefix="wit-", suffix="-" + dest.name)
        os.close(fd)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        name = str(Path(dest).with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"))
    try:
        yield Path(name)
        upload_file(name, dest)
    finally:
        Path(name).unlink(missing_ok=True)


def read_all(paths: list) -> list[bytes]:
    """The contents of many files; remote ones fetched concurrently, in one batch."""
    remote = [p for p in paths if is_remote(p)]
    got = remote[0].fs.cat([p.path for p in remote]) if remote else {}
    fs = remote[0].fs if remote else None

    def one(p) -> bytes:
        if not is_remote(p):
            return Path(p).read_bytes()
        data = got.get(p.path)
        if data is None:  # cat's keys are the filesystem's own spelling of the path
            data = fs.cat_file(p.path)
        return data
    return [one(p) for p in paths]


def write_json(path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WitError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise WitError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None


def remove(path) -> None:
    """Delete a file or a whole prefix; missing is fine."""
    if is_remote(path):
        try:
            path.fs.rm(path.path, recursive=True)
        except FileNotFoundError:
            pass
        return
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def upload_dir(local: str | os.PathLike, dest) -> None:
    """Put a local folder's files under `dest` (a fresh prefix).

    Locally that is one rename (or a copy across devices); remote, one PUT per file.
    """
    local = Path(local)
    if not is_remote(dest):
        d = Path(dest)
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.exists():
            shutil.rmtree(d)
        try:
            local.rename(d)
        except OSError:
            shutil.copytree(local, d)
            shutil.rmtree(local, ignore_errors=True)
        return
    files = [p for p in local.rglob("*") if p.is_file()]
    if files:
        dest.fs.put([str(p) for p in files],
                    [f"{dest.path}/{PurePosixPath(*p.relative_to(local).parts)}" for p in files])
    shutil.rmtree(local, ignore_errors=True)


def _local_move(src, dest) -> None:
    """Rename a local file into place (a copy then delete across devices)."""
    d = Path(dest)
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, d)
    except OSError:
        shutil.copy2(src, d)
        os.unlink(src)


def upload_file(local: str | os.PathLike, dest) -> None:
    """Put one local file at `dest` (locally: a rename)."""
    if not is_remote(dest):
        _local_move(local, dest)
        return
    dest.fs.put_file(str(local), dest.path)
    os.unlink(local)


def download_file(src, local: str | os.PathLike) -> Path:
    """A local copy of `src` (locally: `src` itself, no copy)."""
    if not is_remote(src):
        return Path(src)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    src.fs.get_file(src.path, str(local))
    return local


def move(src, dest) -> None:
    """Move one file within a store: locally a rename, remote a server-side copy then
    delete (no bytes through this machine)."""
    if not is_remote(src):
        _local_move(src, dest)
        return
    src.fs.mv(src.path, dest.path)


def copy(src, dest) -> None:
    """Copy one file within a store (locally a hard link when possible)."""
    if not is_remote(src):
        d = Path(dest)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, d)
        except OSError:
            shutil.copy2(src, d)
        return
    src.fs.copy(src.path, dest.path)


def cache_dir(*parts: str) -> Path:
    """A local folder under the user's cache directory (XDG_CACHE_HOME or ~/.cache)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wit"
    out = base.joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out
