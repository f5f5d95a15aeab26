"""EuroSAT (RGB): ``eurosat/2750/<class>/``, with CoOp's readable class names.

The folder names are CamelCase codes (``SeaLake``); CoOp rewrites them into
phrases CLIP reads better (``Sea or Lake``). Without
``split_zhou_EuroSAT.json`` each class is split 50/20/30 into train/val/test.
"""
from __future__ import annotations

from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import read_and_split_data

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    """10 land-cover classes; CoOp's split: 13,500 train / 5,400 val / 8,100 test."""

    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    docs_section = "eurosat"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_path, new_cnames=NEW_CNAMES)
