"""Data: ``Datum``, ``DatasetBase``, the dataset registry, splits, few-shot cache, loaders, transforms."""
from .coop_dataset import CoOpDataset
from .dataset_base import DatasetBase
from .datum import Datum
from .errors import DatasetLabelError, DatasetNotFoundError
from .images import read_image
from .manager import DataManager, DatasetWrapper, build_data_loader
from .registry import DATASET_REGISTRY, build_dataset
from .transforms import build_transform

__all__ = [
    "CoOpDataset", "DatasetBase", "Datum", "DatasetLabelError", "DatasetNotFoundError",
    "read_image", "DataManager", "DatasetWrapper", "build_data_loader",
    "DATASET_REGISTRY", "build_dataset", "build_transform",
]
