"""Images: Pillow decodes, under limits on encoded bytes and on pixels (checked from the header,
before the pixels are decompressed, so a decompression bomb is refused without being expanded)."""

from __future__ import annotations

import io
import warnings

from gemmakit.errors import InvalidRequestError
from gemmakit.media import MediaLimits
from gemmakit.types import ImagePart

# Formats a browser or the OpenAI API sends, by the MIME type a data: URL declares.
MIME_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG",
                "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}


def decode_image(part: ImagePart, limits: MediaLimits):
    """The part as an RGB `PIL.Image.Image`; InvalidRequestError (400) if it is not acceptable."""
    from PIL import Image, UnidentifiedImageError

    if len(part.data) > limits.max_image_bytes:
        raise InvalidRequestError(f"the image is {len(part.data)} bytes; the limit is "
                                  f"{limits.max_image_bytes}.")
    # A data: URL without a type ("data:;base64,...") arrives as octet-stream: the bytes decide.
    detect = part.mime_type.lower() == "application/octet-stream"
    expected = MIME_FORMATS.get(part.mime_type.lower())
    if expected is None and not detect:
        raise InvalidRequestError(f"unsupported image type '{part.mime_type}' (supported: "
                                  f"{', '.join(sorted(set(MIME_FORMATS) - {'image/jpg'}))}).")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit, raises) on huge images; our own pixel
            # limit below is the rule, applied to the header before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(part.data), formats=list(set(MIME_FORMATS.values())))
            w, h = img.size
            if w * h > limits.max_image_pixels:
                raise InvalidRequestError(
                    f"the image is {w}x{h} = {w * h} pixels; the limit is "
                    f"{limits.max_image_pixels} (a decompression bomb is refused before it is "
                    "expanded).")
            if not detect and img.format != expected:
                raise InvalidRequestError(f"the data is {img.format}, not the declared "
                                          f"'{part.mime_type}'.")
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError:
        raise InvalidRequestError("the image exceeds the pixel limit (decompression bomb).") \
            from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InvalidRequestError):
            raise
        raise InvalidRequestError("the image data is corrupt or not an image.") from None
