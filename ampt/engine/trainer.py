"""Dassl's trainer classes (``SimpleTrainer``, ``TrainerX``) with the project's fixes.

:class:`RunMixin` holds everything that differs from Dassl: checkpoints
loaded with ``weights_only=True``, the run folder's lock (one trainer per
``OUTPUT_DIR``, held for the whole ``train()``), the resume policy
(``--resume``, or an unfinished run in ``OUTPUT_DIR`` under an unchanged
config, always logged; a finished run is refused; ``--force`` moves the old
run aside), ``results.json``, the progress bar, and a test that records its
result with the checkpoint it measured. Both
engines mix it in: here over :class:`TrainerBase`, under ``--engine dassl``
over Dassl's own ``TrainerX``.

Under ``torchrun`` (:mod:`ampt.utils.distributed`) every rank trains on its
share of each global batch, gradients are averaged before each optimizer
step, tests are sharded and their counts summed, and rank 0 alone takes the
run lock and writes results.json, config.yaml, checkpoints and tensorboard.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..results import RunResults, backup_stamp, check_not_finished
from ..utils.locks import run_lock
from .checkpoint import BEST_FILE, CheckpointMissingError, CheckpointMixin, load_checkpoint, weights_digest
from .run_config import check_resume_config, write_run_config
from ..models.backbone import backbone_label
from ..utils import distributed
from .evaluator import build_evaluator
from .progress import AverageMeter, MetricMeter, ScalarWriterMixin, format_eta, progress_bar, train_log_line
from ..errors import UserFileNotFoundError

logger = logging.getLogger(__name__)

_SETTING_FIELDS = ("trainer", "dataset", "shots", "seed", "backbone", "robust_weights", "train_eps")


class RunMixin(CheckpointMixin, ScalarWriterMixin):
    """Checkpoints, resume policy, results.json, progress: shared by both engines."""

    engine_name = "builtin"
    adversarial = False  # adversarial trainers set True: run.train_eps is then ADV.TRAIN.EPS
    fresh_start = False  # train.py --force: move the old run aside, train from scratch
    record_force = True  # records replace same-key ones (train.py --eval-only: only with --force)

    # ------------------------------------------------------------ results.json
    @property
    def results(self) -> RunResults:
        return RunResults(self.output_dir)

    def run_metadata(self) -> Dict[str, Any]:
        cfg = self.cfg
        return {
            "trainer": cfg.TRAINER.NAME or type(self).__name__,
            "dataset": cfg.DATASET.NAME,
            "shots": cfg.DATASET.NUM_SHOTS,
            "seed": cfg.SEED,
            "backbone": backbone_label(cfg.MODEL.BACKBONE),
            "robust_weights": cfg.MODEL.BACKBONE.ROBUST_WEIGHTS or None,
            "train_eps": cfg.ADV.TRAIN.EPS if getattr(self, "adversarial", False) else 0,
            "engine": self.engine_name,
            "finished": self.results.finished,
            **self.batch_metadata(),
        }

    def batch_metadata(self) -> Dict[str, Any]:
        """World size, global batch and learning rate: what one optimizer step means in this run."""
        node = self.cfg.DATALOADER.TRAIN_X
        per_device = bool(node.get("PER_DEVICE", False))
        return {"world_size": distributed.world_size(), "global_batch": distributed.global_batch(node.BATCH_SIZE, per_device),
                "batch_per_device": distributed.per_device_batch(node.BATCH_SIZE, per_device), "lr": self.cfg.OPTIM.LR}

    def test_precision(self) -> str:
        """Precision of the run's own clean and robust tests (``TEST.PRECISION``; fp32 by default)."""
        return str(self.cfg.TEST.get("PRECISION", "fp32"))

    def record_result(
        self, split: str, attack: str, eps: float, steps: int, n_samples: int, accuracy: float, **extra: Any
    ) -> None:
        """Write one record with the checkpoint it measured (see ``record_force``)."""
        record = {
            "dataset": self.cfg.DATASET.NAME, "split": split, "attack": attack, "eps": eps,
            "steps": steps, "n_samples": int(n_samples), "accuracy": round(float(accuracy), 4),
            "prompt": "learned", "precision": self.test_precision(), **self.record_provenance(), **extra,
        }
        subsample = self.cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        if subsample != "all":  # base-to-new: which half of the classes the test set holds
            record["subsample"] = subsample
        if distributed.is_main() and not self.results.add(record, force=self.record_force):
            logger.warning("Not written to %s: it holds the finished run's record of this setting "
                           "(pass --force to replace it)", self.results.path)

    def record_provenance(self) -> Dict[str, Any]:
        """The checkpoint a record measures: its epoch, its folder when loaded, and a weights digest."""
        if not self.get_model_names():
            return {}  # nothing trained (zero-shot): no checkpoint to name
        loaded = getattr(self, "loaded_checkpoint", None) or {"checkpoint_epoch": 0}
        return {**loaded, "weights": weights_digest(self)}

    def final_evaluation(self) -> None:
        """The run's own tests after training; adversarial trainers add robust tests."""
        self.test()

    def _check_same_setting(self) -> None:
        old = self.results.run
        new = self.run_metadata()
        diff = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in _SETTING_FIELDS if k in old and old[k] != new[k]]
        if diff:
            raise RuntimeError(
                f"{self.output_dir} holds an unfinished run with other settings ({'; '.join(diff)}). "
                "Use another --output-dir, or --force to train from scratch there."
            )

    def _restore_best_result(self, directory: str) -> None:
        """After a resume, best_val selection continues from the saved best, not from scratch."""
        names = self.get_model_names()
        best = Path(directory) / names[0] / BEST_FILE if names else None
        if best is not None and best.is_file():
            val = load_checkpoint(best).get("val_result")
            if val is not None:
                self.best_result = float(val)

    # ------------------------------------------------------------ life cycle
    def train(self, *args: Any, **kwargs: Any) -> None:
        """The engine's loop, holding the run folder's lock: a second trainer into it is refused."""
        with run_lock(self.output_dir) if distributed.is_main() else contextlib.nullcontext():
            super().train(*args, **kwargs)

    def _move_old_run_aside(self) -> None:
        """--force: the old model folders, then results.json, get a ``.bak-<stamp>`` suffix."""
        stamp = backup_stamp()
        for name in self.get_model_names():  # models first: a kill in between leaves a finished results.json
            folder = Path(self.output_dir) / name
            if folder.exists():
                target = folder.with_name(f"{name}.bak-{stamp}")
                folder.rename(target)
                logger.warning("Moved the previous checkpoints %s to %s", folder, target)
        self.results.reset(backup=True, stamp=stamp)

    def _choose_start(self) -> None:
        """Resume policy: --force, --resume, an unfinished run here, or from scratch."""
        if self.fresh_start:
            if distributed.is_main():
                self._move_old_run_aside()
            logger.warning("--force: training from scratch in %s", self.output_dir)
            self.start_epoch = 0
        elif self.cfg.RESUME:
            if not self.has_checkpoints(self.cfg.RESUME):
                raise UserFileNotFoundError(f"--resume {self.cfg.RESUME}: no checkpoint of {self.get_model_names()} there")
            logger.warning("Resuming from %s (--resume)", self.cfg.RESUME)
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME)
        elif self.has_checkpoints(self.output_dir):
            self._check_same_setting()
            check_resume_config(self.output_dir, self.cfg)
            logger.warning(
                "%s\nRESUMING the unfinished run in %s (checkpoints found, results.json not finished).\n"
                "Use another --output-dir or --force to start over.\n%s", "!" * 72, self.output_dir, "!" * 72,
            )
            self.start_epoch = self.resume_model_if_exist(self.output_dir)
        elif self.unusable_model_dirs(self.output_dir):
            raise CheckpointMissingError(
                f"{', '.join(self.unusable_model_dirs(self.output_dir))}: checkpoint files are there but no "
                "complete model.pth.tar-N to resume from; pass --force to train from scratch (they are moved aside)"
            )

    def before_train(self) -> None:
        check_not_finished(self.output_dir, force=self.fresh_start)
        self._choose_start()
        if self.start_epoch > 0:
            self._restore_best_result(self.cfg.RESUME or self.output_dir)
        meta = self.run_metadata()
        main = distributed.is_main()
        if main:
            write_run_config(self.cfg, self.output_dir)
            self.results.set_run(**{**meta, "finished": False})
        if self.start_epoch < self.max_epoch:
            logger.info("Training epochs %d..%d of %d", self.start_epoch + 1, self.max_epoch, self.max_epoch)
        logger.info("World size %d: global batch %d (%d per process), learning rate %g (OPTIM.LR, not scaled)",
                    meta["world_size"], meta["global_batch"], meta["batch_per_device"], meta["lr"])
        if main:
            writer_dir = Path(self.output_dir) / "tensorboard"
            writer_dir.mkdir(parents=True, exist_ok=True)
            self.init_writer(str(writer_dir))
        distributed.barrier()  # every rank has chosen where to start before rank 0 saves anything
        self.time_start = time.time()

    def after_epoch(self) -> None:
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val", record=False)
            if curr_result > self.best_result:
                self.best_result = curr_result
                if distributed.is_main():
                    self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name=BEST_FILE)
        if (meet_checkpoint_freq or last_epoch) and distributed.is_main():
            self.save_model(self.epoch, self.output_dir)
        distributed.barrier()  # checkpoints are on disk before any rank reads them

    def after_train(self) -> None:
        logger.info("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
                self.loaded_checkpoint = {"checkpoint_epoch": self.max_epoch}
            self.final_evaluation()
        if distributed.is_main():
            self.results.set_run(finished=True, final_weights=weights_digest(self))
        elapsed = datetime.timedelta(seconds=round(time.time() - self.time_start))
        logger.info("Elapsed: %s", elapsed)
        self.close_writer()

    def run_epoch(self) -> None:
        """One pass over ``train_loader_x``: progress bar, and Dassl's line every PRINT_FREQ batches.

        The logged ``lr`` is the one the batch trained with (Dassl logs it after
        ``forward_backward``, so the last batch of an epoch shows the next epoch's).
        """
        self.set_model_mode("train")
        distributed.set_sampler_epoch(self.train_loader_x, self.epoch)
        losses, batch_time, data_time = MetricMeter(), AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        desc = f"epoch {self.epoch + 1}/{self.max_epoch}"
        bar = progress_bar(self.train_loader_x, total=self.num_batches, desc=desc)
        end = time.time()
        for self.batch_idx, batch in enumerate(bar):
            data_time.update(time.time() - end)
            lr = self.get_current_lr()  # before forward_backward, which may step the schedule
            losses.update(self.forward_backward(batch))
            batch_time.update(time.time() - end)
            remaining = (self.max_epoch - self.epoch) * self.num_batches - self.batch_idx - 1
            bar.set_postfix_str(f"{losses} eta {format_eta(batch_time.avg * remaining)}", refresh=False)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                logger.info(train_log_line(self.epoch, self.max_epoch, self.batch_idx, self.num_batches,
                                           batch_time, data_time, losses, lr))
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", lr, n_iter)
            end = time.time()
        bar.close()

    @torch.no_grad()
    def test(self, split: Optional[str] = None, record: bool = True) -> float:
        """Clean accuracy on ``split`` (TEST.SPLIT by default); logged and, if ``record``, saved."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            if split == "val":
                logger.warning("No validation set: evaluating on the test set instead (as Dassl does)")
            split, loader = "test", self.test_loader
        logger.info("Evaluate on the *%s* set", split)
        loader = distributed.shard_loader(loader)
        for batch in progress_bar(loader, total=len(loader), desc=f"test ({split})"):
            inputs, labels = self.parse_batch_test(batch)
            self.evaluator.process(self.model_inference(inputs), labels)
        if distributed.world_size() > 1:
            self.evaluator.merge(distributed.all_gather_objects(self.evaluator.state()))
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        accuracy = list(results.values())[0]
        if record:
            self.record_result(split, "clean", 0, 0, self.evaluator._total, accuracy)
        return accuracy

    # ------------------------------------------------------------ anomaly
    def detect_anomaly(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"Loss is infinite or NaN at epoch {getattr(self, 'epoch', 0) + 1}, batch "
                f"{getattr(self, 'batch_idx', 0) + 1}: lower OPTIM.LR or check the inputs"
            )


def _as_list(names: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


class TrainerBase:
    """Dassl's ``TrainerBase``: registered models with their optimizer and scheduler."""

    # Run-folder layout (ampt.sweep.layout): the full config keys that this trainer's method level of a
    # run folder spells out, by run_folder_tag(cfg); () = no such level (overridden keys then go to the
    # folder's extra level as KEY-VALUE).
    run_folder_keys: Tuple[str, ...] = ()

    @classmethod
    def run_folder_tag(cls, cfg: Any) -> str:
        """The method level of a run folder of ``cfg``; defined by trainers that declare ``run_folder_keys``."""
        raise NotImplementedError(f"{cls.__name__} declares run_folder_keys but no run_folder_tag")

    def __init__(self) -> None:
        self._models: Dict[str, nn.Module] = OrderedDict()
        self._optims: Dict[str, Any] = OrderedDict()
        self._scheds: Dict[str, Any] = OrderedDict()
        self._writer = None

    def register_model(
        self, name: str = "model", model: Optional[nn.Module] = None, optim: Any = None, sched: Any = None
    ) -> None:
        """Register ``model`` (saved, resumed and put in train/eval mode as one) under ``name``."""
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot register a model before super().__init__() is called")
        if name in self._models:
            raise KeyError(f'A model named "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: Union[None, str, Sequence[str]] = None) -> List[str]:
        real = list(self._models.keys())
        wanted = _as_list(names)
        if wanted is None:
            return real
        unknown = [n for n in wanted if n not in real]
        if unknown:
            raise KeyError(f"Unknown model name(s) {unknown}; registered: {real}")
        return wanted

    def set_model_mode(self, mode: str = "train", names: Union[None, str, Sequence[str]] = None) -> None:
        if mode not in ("train", "test", "eval"):
            raise KeyError(f'Model mode must be "train", "test" or "eval" (got "{mode}")')
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names: Union[None, str, Sequence[str]] = None) -> None:
        """Step every scheduler once; trainers call it at the last batch of an epoch."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def train(self, start_epoch: int, max_epoch: int) -> None:
        """Generic loop: before_train, per epoch before/run/after_epoch, after_train."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def parse_batch_train(self, batch: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def parse_batch_test(self, batch: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        raise NotImplementedError

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_zero_grad(self, names: Union[None, str, Sequence[str]] = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def sync_gradients(self, names: Union[None, str, Sequence[str]] = None) -> None:
        """Under torchrun: average the trainable gradients over ranks (one collective)."""
        if distributed.is_distributed():
            distributed.average_gradients(p for name in self.get_model_names(names)
                                          for p in self._models[name].parameters())

    def model_update(self, names: Union[None, str, Sequence[str]] = None) -> None:
        self.sync_gradients(names)
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names: Union[None, str, Sequence[str]] = None) -> None:
        """Zero grad, backward (NaN/inf loss raises), optimizer step."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(RunMixin, TrainerBase):
    """Dassl's ``SimpleTrainer``: config, device, data, model (the subclass's), evaluator."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.device = distributed.device(bool(cfg.USE_CUDA))
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        distributed.broadcast_parameters(p for name in self.get_model_names()
                                         for p in self._models[name].parameters())
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg: Any) -> None:
        """Hook: refuse settings the trainer cannot run with (called first)."""

    def build_data_loader(self) -> None:
        """Set ``train_loader_x, val_loader, test_loader, num_classes, lab2cname, dm``."""
        from ..data import DataManager

        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = getattr(dm, "train_loader_u", None)
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = getattr(dm, "num_source_domains", 1)
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_model(): build the model, its optimizer "
            "(ampt.optim.build_optimizer) and scheduler (build_lr_scheduler), then register_model() them"
        )

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_epoch, self.max_epoch)

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def parse_batch_test(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names: Union[None, str, Sequence[str]] = None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """Dassl's ``TrainerX``: trains on labeled data (``train_loader_x``) only."""

    def parse_batch_train(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            batch["img"].to(self.device),
            batch["label"].to(self.device),
            batch["domain"].to(self.device),
        )
