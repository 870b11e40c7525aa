"""Open a record's image: a PNG or JPEG file through Pillow, or a generated ``scene:``.

Paths in data files are made absolute by the readers (relative to the data file), so a record's
``image`` is usable wherever the record travels (replay buffers, checkpoints). Decoded images are
kept in a small cache: a stage's records are encoded again every phase.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from everlearn.errors import DataError
from everlearn.vision import scenes

CACHE_SIZE = 4096  # decoded images kept (64x64 RGB: 12 KB each)
_cache: OrderedDict[str, Image.Image] = OrderedDict()


def load_image(ref: str) -> Image.Image:
    """The RGB image ``ref`` names; ``DataError`` names the file and what is wrong."""
    img = _cache.get(ref)
    if img is not None:
        _cache.move_to_end(ref)
        return img
    if ref.startswith(scenes.PREFIX):
        try:
            img = scenes.render(scenes.parse(ref))
        except ValueError as exc:
            raise DataError(f"image {ref!r}: not a valid generated scene ({exc})") from None
    else:
        img = _open(Path(ref))
    _cache[ref] = img
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return img


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG"):
                raise DataError(f"{path}: expected a PNG or JPEG image, got {im.format}")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not an image Pillow can read ({type(exc).__name__})") from None
