"""ImageNet-A: ``imagenet-adversarial/imagenet-a/<wnid>/``, with a copy of ``classnames.txt``.

Test only: the 200 ImageNet classes present; CoOp evaluates a 200-way
classifier. Label = position of the sorted class folder, name from
``classnames.txt``.
"""
from __future__ import annotations

from ampt.api import DATASET_REGISTRY

from .imagenet import ImageNetFolderVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetFolderVariant):
    """200 classes, 7,500 natural adversarial images."""

    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    docs_section = "imageneta"
