"""What fetch adds around img2dataset's resizer: JPEGs decoded at reduced scale, and
the hash and signature of every image stored.

img2dataset's `Resizer` decodes each download at full size with
`cv2.imdecode(..., IMREAD_UNCHANGED)`, resizes it and encodes it with `cv2.imencode`.
Inside a fetch task, `CvTap` stands in for the `cv2` module the resizer sees (swapped
in by `wit_builder.stages.fetch.i2d.patched`, the one place wit patches img2dataset):
- `imdecode` decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when the
  reduced image is still at least the target size on the side the resize mode
  measures. The entropy decoding is the same, but the inverse DCT, colour conversion
  and the resize that follows work on 1/4 to 1/64 of the pixels: about half the CPU
  per web-size image. Gray JPEGs stay gray; EXIF orientation is ignored, as
  IMREAD_UNCHANGED does. Anything else is decoded exactly as img2dataset would.
- `imencode` keeps the pixels it is given, so `hashing_resizer` can hash them.
`hashing_resizer` wraps the resizer: it reports the true original size of a reduced
image, and records the sha256 of the stored bytes and the signature of the stored
pixels' canonical view (wit_builder.canonical: the content without the white bars
`--resize-mode border` added; pHash, colour thumbnail, detail).
The resizer runs in the fetch task's one main thread, so a tap serves one image at a
time.
"""
from __future__ import annotations

import io
from typing import Callable

from wit_builder.stages.fetch.i2d import Resized, resized

SMALLEST_SIDE = ("keep_ratio", "center_crop")        # img2dataset's SmallestMaxSize
LARGEST_SIDE = ("border", "keep_ratio_largest")      # its LongestMaxSize


class Download(io.BytesIO):
    """A downloaded image as img2dataset's resizer gets it, knowing its row."""

    def __init__(self, index: int, data: bytes):
        super().__init__(data)
        self.index = index


def reduction(width: int, height: int, target: int, resize_mode: str) -> int:
    """The largest of 8, 4, 2 (else 1) by which a width x height JPEG can be decoded
    while the side `resize_mode` scales to `target` stays at least `target`."""
    if resize_mode in SMALLEST_SIDE:
        side = min(width, height)
    elif resize_mode in LARGEST_SIDE:
        side = max(width, height)
    else:  # "no": the stored image keeps the original size
        return 1
    for r in (8, 4, 2):
        if -(-side // r) >= target:  # libjpeg rounds the scaled size up
            return r
    return 1


class CvTap:
    """Stands in for the cv2 module inside img2dataset's resizer (see the module doc;
    `wit_builder.stages.fetch.i2d.patched` puts it there)."""

    def __init__(self, cv2, target: int | None, resize_mode: str):
        self.cv2 = cv2
        self.target, self.resize_mode = target, resize_mode
        self.pixels = None       # what imencode was given last
        self.original = None     # (width, height) of the last image decoded reduced

    def __getattr__(self, name: str):
        return getattr(self.cv2, name)

    def imdecode(self, buf, flags):
        from wit_builder.canonical import jpeg_frame, short_scan
        self.original = None
        frame = jpeg_frame(memoryview(buf)) if flags == self.cv2.IMREAD_UNCHANGED else None
        img, scale = None, 1
        if frame is not None and self.target:
            img, scale = self._reduced(buf, *frame)
        if img is None:
            img, scale = self.cv2.imdecode(buf, flags), 1
        short = short_scan(img, buf, scale) if frame is not None and img is not None else None
        if short:  # img2dataset's resizer reports it: the row is a decode_error
            raise ValueError(short)
        return img

    def _reduced(self, buf, width: int, height: int, components: int):
        """(pixels decoded at reduced scale, the scale), or (None, 1) where full size is due."""
        r = reduction(width, height, self.target, self.resize_mode)
        if r == 1:
            return None, 1
        from wit_builder.canonical import reduced_flag
        img = self.cv2.imdecode(buf, reduced_flag(self.cv2, r, components == 1))
        if img is not None:
            self.original = (width, height)
        return img, r

    def imencode(self, ext, img, *args, **kwargs):
        self.pixels = img
        return self.cv2.imencode(ext, img, *args, **kwargs)


def hashing_resizer(resizer, tap: CvTap, stored: dict[int, tuple]) -> Callable:
    """`resizer` (img2dataset's, run under `i2d.patched(cv2=tap)`), reporting the true original
    size of images decoded reduced and recording, per row index, (sha256 of the
    stored bytes, pHash, thumb, detail) of the stored pixels' canonical view
    (computed here, where they are already decoded, so curate need not decode the
    image again)."""
    import hashlib

    from wit_builder.canonical import signature

    def resize(img_stream, blurring_bbox_list=None) -> Resized:
        tap.pixels, tap.original = None, None
        out = resized(resizer(img_stream, blurring_bbox_list))
        if out.img is not None and tap.original is not None:
            out = out._replace(original_width=tap.original[0], original_height=tap.original[1])
        index = getattr(img_stream, "index", None)
        if out.img is not None and tap.pixels is not None and index is not None:
            try:
                stored[index] = (hashlib.sha256(out.img).hexdigest(), *signature(tap.pixels, "BGR"))
            except Exception:  # an odd pixel layout: curate decodes and hashes it instead
                pass
        tap.pixels = None
        return out
    return resize
