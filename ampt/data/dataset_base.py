"""``DatasetBase``: Dassl's dataset container, with label checks at construction."""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import UserError
from .datum import Datum
from .errors import DatasetLabelError
from .fewshot import warn_short_classes

logger = logging.getLogger(__name__)

DataList = List[Datum]


class DatasetBase:
    """Holds ``train_x``, ``train_u``, ``val`` and ``test`` lists of :class:`Datum`.

    Same attributes and methods as Dassl's ``DatasetBase``. The class count
    is ``max(train_x label) + 1`` (Dassl's rule); on top of Dassl, a label
    range with a hole (a class with no training item) or a val/test label
    outside ``[0, num_classes)`` raises :class:`DatasetLabelError` naming
    the dataset, instead of failing later inside a loss or a metric.
    """

    dataset_dir = ""  # the directory where the dataset is stored
    domains: List[str] = []  # string names of all domains

    def __init__(
        self,
        train_x: Optional[DataList] = None,
        train_u: Optional[DataList] = None,
        val: Optional[DataList] = None,
        test: Optional[DataList] = None,
    ) -> None:
        if not train_x:
            raise DatasetLabelError(
                f"{type(self).__name__}: the training set (train_x) is empty; "
                "check DATASET.ROOT and the dataset's split file"
            )
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)
        self.check_labels()

    @property
    def train_x(self) -> DataList:
        return self._train_x

    @property
    def train_u(self) -> Optional[DataList]:
        return self._train_u

    @property
    def val(self) -> Optional[DataList]:
        return self._val

    @property
    def test(self) -> Optional[DataList]:
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Sequence[Datum]) -> int:
        """``max(label) + 1`` over ``data_source`` (Dassl's rule)."""
        return max({item.label for item in data_source}) + 1

    @staticmethod
    def get_lab2cname(data_source: Sequence[Datum]) -> Tuple[Dict[int, str], List[str]]:
        """``({label: classname}, classnames sorted by label)`` from the items' class names."""
        mapping = {label: cname for label, cname in {(i.label, i.classname) for i in data_source}}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_labels(self) -> None:
        """Raise :class:`DatasetLabelError` for an empty class or an out-of-range label."""
        name = type(self).__name__
        n = self._num_classes
        present = set(self._lab2cname)
        not_int = [y for y in present if not isinstance(y, int) or isinstance(y, bool)]
        if not_int:
            raise DatasetLabelError(f"{name}: labels must be integers, got {not_int[:5]}")
        if min(present) < 0:
            raise DatasetLabelError(f"{name}: negative label {min(present)} in train_x")
        missing = sorted(set(range(n)) - present)
        if missing:
            raise DatasetLabelError(
                f"{name}: {len(missing)} of {n} classes have no training item "
                f"(labels {missing[:10]}{' ...' if len(missing) > 10 else ''}); "
                "labels must run from 0 to num_classes - 1 without holes"
            )
        for split in ("train_u", "val", "test"):
            items = getattr(self, f"_{split}") or []
            bad = {item.label for item in items} - present
            if bad and split != "train_u":
                raise DatasetLabelError(
                    f"{name}: {split} has labels outside the {n} training classes [0, {n}): "
                    f"{sorted(bad)[:10]}"
                )

    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        """Dassl's check that every given domain name is one of ``self.domains``."""
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise UserError(
                    f"{type(self).__name__}: domain {domain!r} is not valid; valid: {self.domains}"
                )

    def generate_fewshot_dataset(
        self, *data_sources: DataList, num_shots: int = -1, repeat: bool = False
    ) -> Union[DataList, List[DataList]]:
        """Sample ``num_shots`` items per class from each data source (Dassl's algorithm).

        Per source: group by label in order of first appearance, then per
        label ``random.sample(items, num_shots)`` from Python's global
        ``random``; a class with fewer items keeps them all, or draws
        ``random.choices(items, k=num_shots)`` when ``repeat``. The same
        global seed therefore yields the same subset as Dassl/CoOp. One
        source returns a list, several return a list of lists; ``num_shots
        < 1`` returns the inputs unchanged.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else list(data_sources)
        logger.info(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset: DataList = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                elif repeat:
                    sampled = random.choices(items, k=num_shots)
                else:
                    sampled = items
                dataset.extend(sampled)
            if not repeat:
                warn_short_classes(dataset, num_shots, f"sampling (source {len(output) + 1} of {len(data_sources)})")
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def split_dataset_by_label(data_source: Sequence[Datum]) -> Dict[int, DataList]:
        """``{label: [items]}``, labels in order of first appearance."""
        output: Dict[int, DataList] = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Sequence[Datum]) -> Dict[int, DataList]:
        """``{domain: [items]}``, domains in order of first appearance."""
        output: Dict[int, DataList] = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
