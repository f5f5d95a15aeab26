"""ImageNet-R: ``imagenet-rendition/imagenet-r/<wnid>/``, with a copy of ``classnames.txt``.

Test only: the 200 ImageNet classes present; CoOp evaluates a 200-way
classifier. Label = position of the sorted class folder, name from
``classnames.txt``.
"""
from __future__ import annotations

from ampt.api import DATASET_REGISTRY

from .imagenet import ImageNetFolderVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetFolderVariant):
    """200 classes, 30,000 renditions (art, cartoons, toys, ...)."""

    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    docs_section = "imagenetr"
