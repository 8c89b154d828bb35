"""The frames of a stream request: multipart bodies split into parts, JPEGs decoded within a pixel limit.

Pure functions (Pillow, numpy; no Ray, no HTTP framework), so a bad body is refused the same way everywhere and
is cheap to test. Both raise `StreamError` with the HTTP status and a stable reason code.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.serving.streams import StreamError


def decode_jpeg(data: bytes, *, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB of one JPEG; StreamError 415 when it is not one, 413 when it is too large (read from
    the header, before the pixels are decoded)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise StreamError(413, "frame_too_large", f"frame of {width}x{height} pixels; at most {max_pixels}")
            return np.asarray(image.convert("RGB"))
    except StreamError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input; all mean "not a JPEG"
        raise StreamError(415, "not_a_jpeg", f"the body is not a JPEG image ({type(e).__name__}: {e})") from e


def split_frames(body: bytes, content_type: str, *, max_frames: int) -> list[bytes]:
    """The JPEG frames of a request body: the body itself, or each part of a multipart body (`multipart/mixed`,
    or `multipart/form-data` as `curl -F f1=@a.jpg -F f2=@b.jpg` sends it), in order. StreamError 413 when there
    are more than `max_frames`, 400 when a multipart body is malformed."""
    kind, _, params = content_type.partition(";")
    if not kind.strip().lower().startswith("multipart/"):
        return [body]
    boundary = next((v.strip().strip('"') for k, _, v in (p.strip().partition("=") for p in params.split(";"))
                     if k.lower() == "boundary"), "")
    if not boundary:
        raise StreamError(400, "bad_multipart", f"{kind.strip()} without a boundary parameter")
    # RFC 2046 section 5.1.1: parts are separated by CRLF "--" boundary; the last delimiter ends with "--".
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode())
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise StreamError(400, "bad_multipart", "a multipart part without a blank line after its headers")
        parts.append(data)
        if len(parts) > max_frames:
            raise StreamError(413, "too_many_frames", f"more than {max_frames} frames in one request")
    if not parts:
        raise StreamError(400, "bad_multipart", f"no parts delimited by --{boundary[:70]}")
    return parts
