"""Hand-written zero-shot prompt templates, per dataset (CoOp's ``trainers/zsclip.py``)."""
from __future__ import annotations

DEFAULT_TEMPLATE = "a photo of a {}."

# Keyed by dataset class name (DATASET.NAME); one "{}" for the class name.
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# The 7 templates CoOp's ZeroshotCLIP2 ensembles on ImageNet (selected by OpenAI's CLIP notebook).
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def get_template(dataset_name: str) -> str:
    """The dataset's template, or :data:`DEFAULT_TEMPLATE` for a dataset CoOp does not list."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def check_template(template: str) -> str:
    """Refuse a template without exactly one ``{}`` placeholder."""
    if template.count("{}") != 1:
        raise ValueError(f'A prompt template needs exactly one "{{}}" for the class name, got "{template}"')
    return template
