"""ImageNet-Sketch: ``imagenet-sketch/images/<wnid>/``, with a copy of ``classnames.txt``.

Test only: the 1000 ImageNet classes, so labels match ImageNet's. Label =
position of the sorted class folder, name from ``classnames.txt``.
"""
from __future__ import annotations

from ampt.api import DATASET_REGISTRY

from .imagenet import ImageNetFolderVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetFolderVariant):
    """1000 classes, 50,889 sketches."""

    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    docs_section = "imagenetsketch"
