"""The data contracts, each written down once: fetch/status's columns and types, the
fetch statuses (and which a `--retry-failed` tries again), curate's drop reasons.

Writers (fetch's status table, the tests' fixture) build their tables from
`fetch_status_schema()`, readers (curate) check against it, and the docs' tables
(docs/fetch.md statuses, docs/curate.md drop reasons, docs/architecture.md's fetch
row) are tested against these values (tests/test_structure.py).
"""
from __future__ import annotations

from enum import StrEnum

# fetch/status: (column, type) in order; the type names are pyarrow's factories
FETCH_STATUS = (
    ("uid", "string"), ("url", "string"), ("text", "string"), ("selected_by", "int32"),
    ("query_ids", "list<int32>"), ("status", "string"), ("error", "string"),
    ("width", "int32"), ("height", "int32"), ("original_width", "int32"),
    ("original_height", "int32"), ("bytes", "int64"), ("sha256", "string"),
    ("fetch_shard", "int32"), ("key", "string"),
    # the signature of the stored image's canonical view (wit_builder.canonical)
    ("stored_sha256", "string"), ("stored_phash", "int64"), ("stored_thumb", "binary"),
    ("stored_detail", "float32"),
)
FETCH_COLUMNS = tuple(name for name, _ in FETCH_STATUS)
SIGNATURE = ("stored_sha256", "stored_phash", "stored_thumb", "stored_detail")


def fetch_status_schema(signature: bool = True):
    """fetch/status as a pyarrow schema (without the signature columns if asked: a
    fetch from before them, or shards from elsewhere)."""
    import pyarrow as pa
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
             "binary": pa.binary(), "float32": pa.float32(), "list<int32>": pa.list_(pa.int32())}
    return pa.schema([(n, types[t]) for n, t in FETCH_STATUS if signature or n not in SIGNATURE])


class FetchStatus(StrEnum):
    """Every value of fetch/status's `status` (docs/fetch.md, "Statuses")."""
    SUCCESS = "success"
    NOT_FOUND = "not_found"
    HTTP_ERROR = "http_error"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    DNS_ERROR = "dns_error"
    EXCLUDED = "excluded"
    ROBOTS_DISALLOWED = "robots_disallowed"
    ROBOTS_UNAVAILABLE = "robots_unavailable"
    HOST_GIVEN_UP = "host_given_up"
    HOST_DEFERRED = "host_deferred"
    SHARD_STOPPED = "shard_stopped"
    TLS_ERROR = "tls_error"
    REDIRECT_LOOP = "redirect_loop"
    BAD_URL = "bad_url"
    BLOCKED_ADDRESS = "blocked_address"
    ROBOTS_OPTOUT = "robots_optout"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    DECODE_ERROR = "decode_error"
    SHARD_FAILED = "shard_failed"
    FAILED = "failed"


S = FetchStatus
# Failures worth trying again later (`--retry-failed`); everything else is a property of the URL.
TRANSIENT = frozenset(s.value for s in (
    S.TIMEOUT, S.CONNECTION_ERROR, S.RATE_LIMITED, S.SERVER_ERROR, S.DNS_ERROR,
    S.ROBOTS_UNAVAILABLE, S.HOST_GIVEN_UP, S.HOST_DEFERRED, S.SHARD_STOPPED, S.SHARD_FAILED))
# Of those, what is worth trying again within the same shard (a DNS failure is cached
# for the shard, a given-up host stays given up).
RETRY_NOW = frozenset(s.value for s in (S.TIMEOUT, S.CONNECTION_ERROR, S.RATE_LIMITED,
                                        S.SERVER_ERROR))


class DropReason(StrEnum):
    """curate's `drop_reason`, in precedence order: a sample gets the first that applies."""
    FAILED_DOWNLOAD = "failed_download"
    UNDECODABLE = "undecodable"
    TOO_SMALL = "too_small"
    BAD_ASPECT = "bad_aspect"
    SHORT_CAPTION = "short_caption"
    BLANK = "blank"
    EVAL_SET = "eval_set"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"


DROP_REASONS = tuple(r.value for r in DropReason)
