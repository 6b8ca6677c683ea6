"""What netguard reads from an answer: the HTTP status as a Failure, X-Robots-Tag
opt-outs addressed to us, and whether the bytes are an image fetch accepts (format,
area before decoding, truncated JPEG/PNG)."""
from __future__ import annotations

import http.client
import io
import re

from wit_builder.canonical import jpeg_frame
from wit_builder.errors import Failure

# X-Robots-Tag directives addressed to these tokens (or to no token) apply to us.
ROBOTS_TOKENS = ("wit", "wit-build", "img2dataset")
_TOKEN = re.compile(r"[a-z0-9._-]+")
_VALUED_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
_PNG_END = b"IEND\xaeB`\x82"


def is_opted_out(headers: http.client.HTTPMessage, directives: frozenset[str]) -> str | None:
    """The X-Robots-Tag value that forbids use by us, or None.

    A value is `[token:] directive, directive...`; one addressed to another crawler's
    token does not apply. Directives that take a value (`max-snippet: 20`) are no token.
    """
    for value in headers.get_all("X-Robots-Tag") or []:
        head, colon, rest = value.partition(":")
        head = head.strip().lower()
        if colon and _TOKEN.fullmatch(head) and head not in _VALUED_DIRECTIVES:
            if head not in ROBOTS_TOKENS:
                continue
            value = rest
        if any(d.split(":")[0].strip().lower() in directives for d in value.split(",")):
            return value.strip()
    return None


def image_problem(data: bytes, max_area: int) -> tuple[str, str] | None:
    """(status, message) if `data` is no image fetch accepts, read from headers only.
    A plain JPEG's size comes from its frame header (canonical.jpeg_frame, a few
    microseconds); any other file is opened by PIL, which reads its header."""
    frame = jpeg_frame(data)
    if frame is not None:
        (width, height, _), fmt = frame, "JPEG"
    else:
        from PIL import Image
        try:
            with Image.open(io.BytesIO(data)) as im:
                (width, height), fmt = im.size, im.format
        except Image.DecompressionBombError as e:
            return "too_large", f"decompression bomb, not decoded: {e}"
        except Exception:  # UnidentifiedImageError, or a plugin choking on a malformed header
            return "not_an_image", f"not an image ({len(data):,} bytes starting {data[:24]!r})"
    if width * height > max_area:
        return "too_large", (f"image is {width}x{height} = {width * height:,} pixels, above "
                             f"--max-image-area {max_area:,} (not decoded)")
    if (fmt == "JPEG" and not _jpeg_complete(data)) or (fmt == "PNG" and data.rfind(_PNG_END) < 0):
        return "truncated", f"{fmt} data ends before the end of the image ({len(data):,} bytes)"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True if an end-of-image marker follows the first scan (markers cannot occur inside
    entropy-coded data, and an EXIF thumbnail's EOI sits before the first scan)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif marker == 0xD9:
            return True
        else:
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker == 0xDA:
                return data.find(b"\xff\xd9", i + 2 + length) >= 0
            i += 2 + length
    return False


def status_failure(resp: http.client.HTTPResponse, url: str) -> Failure:
    code, reason = resp.status, resp.reason
    msg = f"HTTP {code} {reason} from {url}"
    if code in (404, 410):
        return Failure("not_found", msg)
    if code == 429:
        retry_after = resp.getheader("Retry-After", "")
        return Failure("rate_limited", msg, float(retry_after) if retry_after.isdigit() else None)
    if code == 408:
        return Failure("timeout", msg)
    if code >= 500:
        return Failure("server_error", msg)
    return Failure("http_error", msg)

