"""Dataset errors a user can act on: each names the dataset and the path or label at fault."""
from __future__ import annotations

from ..errors import UserError, UserFileNotFoundError


class DatasetNotFoundError(UserFileNotFoundError):
    """A dataset folder, image folder, annotation file or split file is missing.

    Subclasses ``FileNotFoundError`` so callers that already catch missing
    files keep working; the message names the dataset, what was expected,
    the path looked at, and the ``DATASETS.md`` section describing the layout.
    """


class DatasetLabelError(UserError):
    """A dataset's labels are inconsistent (an empty class, a label outside the class list)."""


def dataset_not_found(dataset: str, what: str, path: str, docs_section: str = "") -> DatasetNotFoundError:
    """Build the standard message: ``OxfordPets: image folder not found at /x. See DATASETS.md#oxfordpets``."""
    where = f"DATASETS.md#{docs_section}" if docs_section else "DATASETS.md"
    return DatasetNotFoundError(
        f"{dataset}: {what} not found at {path}. "
        f"Check DATASET.ROOT (--root) and the expected layout in {where}"
    )
