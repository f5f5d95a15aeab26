"""Reading images; the only place the data pipeline touches image files."""
from __future__ import annotations

from PIL import Image
from ..errors import UserFileNotFoundError


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image.

    Datasets never check their files when they are built, so this is where
    a missing or unreadable image surfaces; both errors name the path.
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserFileNotFoundError(
            f"Image not found: {path}. The dataset index (split file or few-shot cache) lists it; "
            "check that DATASET.ROOT points at the complete dataset folder"
        ) from None
    except OSError as err:
        raise OSError(f"Cannot read image {path}: {err}") from err
