"""``DataManager``: dataset, transforms and loaders with Dassl's settings."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import torch
import torchvision.transforms as T
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from ..utils import distributed

from .datum import Datum
from .images import read_image
from .registry import build_dataset
from .transforms import INTERPOLATION_MODES, build_transform
from ..errors import UserError

logger = logging.getLogger(__name__)

SAMPLERS = ("RandomSampler", "SequentialSampler")
Transform = Union[Callable, Sequence[Callable], None]


class DatasetWrapper(Dataset):
    """Turns a list of :class:`Datum` into dict samples: img, label, domain, impath, index.

    As Dassl's: a list of transforms gives ``img``, ``img2``, ...;
    ``DATALOADER.K_TRANSFORMS > 1`` (train only) makes each a list of K
    views; ``DATALOADER.RETURN_IMG0`` adds the resized untransformed image
    as ``img0``.
    """

    def __init__(self, cfg: Any, data_source: List[Datum], transform: Transform = None,
                 is_train: bool = False) -> None:
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise UserError(
                f"DATALOADER.K_TRANSFORMS is {self.k_tfm} but no transform is given; "
                "set INPUT.NO_TRANSFORM False or K_TRANSFORMS 1"
            )
        to_tensor = [T.Resize(cfg.INPUT.SIZE, interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]),
                     T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = self.data_source[idx]
        output: Dict[str, Any] = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm: Callable, img0: Any) -> Any:
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views


def build_sampler(sampler_type: str, data_source: List[Datum]) -> Sampler:
    """``RandomSampler`` or ``SequentialSampler``; other Dassl samplers need ``--engine dassl``."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    raise UserError(
        f'Sampler "{sampler_type}" is not available in the built-in engine; valid: {", ".join(SAMPLERS)} '
        "(Dassl's domain/class samplers need --engine dassl)"
    )


def build_distributed_sampler(cfg: Any, sampler_type: str, data_source: List[Datum]) -> DistributedSampler:
    """Under torchrun: this rank's share of one permutation per epoch (seeded by SEED and the epoch).

    Rank ``r`` takes positions ``r, r + N, ...`` of the permutation, so the
    ranks' ``b``-th batches together are the permutation's ``b``-th global
    batch whatever ``N`` is (``drop_last``: no sample is repeated to pad).
    """
    build_sampler(sampler_type, data_source)  # the same names are valid
    return DistributedSampler(data_source, num_replicas=distributed.world_size(), rank=distributed.rank(),
                              shuffle=sampler_type == "RandomSampler", seed=max(int(cfg.SEED), 0), drop_last=True)


def build_data_loader(cfg: Any, sampler_type: str, data_source: List[Datum], batch_size: int,
                      tfm: Transform = None, is_train: bool = True,
                      dataset_wrapper: Optional[Type[Dataset]] = None) -> DataLoader:
    """A loader over ``data_source``; drops the last partial batch when training on >= one batch (Dassl).

    Training under torchrun: a :class:`DistributedSampler` and this
    process's share of ``batch_size`` (see :func:`ampt.utils.distributed.per_device_batch`).
    Evaluation loaders are sharded when a test runs (whole batches per rank).
    """
    wrapper = dataset_wrapper or DatasetWrapper
    drop_last = is_train and len(data_source) >= batch_size
    if is_train and distributed.is_distributed():
        sampler: Sampler = build_distributed_sampler(cfg, sampler_type, data_source)
        batch_size = distributed.per_device_batch(batch_size, bool(cfg.DATALOADER.TRAIN_X.PER_DEVICE))
    else:
        sampler = build_sampler(sampler_type, data_source)
    loader = DataLoader(
        wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=drop_last,
        pin_memory=bool(cfg.USE_CUDA and torch.cuda.is_available()),
    )
    if len(loader) == 0:
        raise UserError(f"Empty data loader over {len(data_source)} item(s) with batch size {batch_size}")
    return loader


class DataManager:
    """Builds ``cfg.DATASET.NAME`` and its loaders (Dassl's ``DataManager``)."""

    def __init__(self, cfg: Any, custom_tfm_train: Transform = None, custom_tfm_test: Transform = None,
                 dataset_wrapper: Optional[Type[Dataset]] = None) -> None:
        dataset = build_dataset(cfg)
        tfm_train = build_transform(cfg, is_train=True) if custom_tfm_train is None else custom_tfm_train
        tfm_test = build_transform(cfg, is_train=False) if custom_tfm_test is None else custom_tfm_test
        loader = lambda split, sampler, bs, tfm, train: build_data_loader(  # noqa: E731
            cfg, sampler, split, bs, tfm, train, dataset_wrapper)
        dl = cfg.DATALOADER
        self.train_loader_x = loader(dataset.train_x, dl.TRAIN_X.SAMPLER, dl.TRAIN_X.BATCH_SIZE, tfm_train, True)
        self.train_loader_u = None
        if dataset.train_u:
            u_sampler, u_bs = (dl.TRAIN_X.SAMPLER, dl.TRAIN_X.BATCH_SIZE) if dl.TRAIN_U.SAME_AS_X \
                else (dl.TRAIN_U.SAMPLER, dl.TRAIN_U.BATCH_SIZE)
            self.train_loader_u = loader(dataset.train_u, u_sampler, u_bs, tfm_train, True)
        self.val_loader = None
        if dataset.val:
            self.val_loader = loader(dataset.val, dl.TEST.SAMPLER, dl.TEST.BATCH_SIZE, tfm_test, False)
        self.test_loader = loader(dataset.test, dl.TEST.SAMPLER, dl.TEST.BATCH_SIZE, tfm_test, False)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    def show_dataset_summary(self, cfg: Any) -> None:
        """Log a table: dataset name, domains, class count and split sizes."""
        ds = self.dataset
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(ds.train_x):,}"])
        if ds.train_u:
            table.append(["# train_u", f"{len(ds.train_u):,}"])
        if ds.val:
            table.append(["# val", f"{len(ds.val):,}"])
        table.append(["# test", f"{len(ds.test):,}"])
        logger.info(tabulate(table))
