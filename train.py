#!/usr/bin/env python
"""Train or evaluate a trainer with CoOp's ``train.py`` command line.

Added to CoOp's flags: ``--engine {builtin,dassl}``, ``--force`` (train a
finished run again, from scratch; the old checkpoints and results.json are
moved aside) and APT's ``--eps --alpha --steps
--adv-prompt`` (aliases of ``ADV.TRAIN.*``; eps and alpha in 1/255 units).
Trailing ``KEY VALUE`` pairs override the config last.

On many GPUs: ``torchrun --nproc_per_node N train.py <the same arguments>``
(:mod:`ampt.utils.distributed`); rank 0 writes the run folder.

Example (CoOp's script arguments work unchanged)::

    python train.py --root DATA --seed 1 --trainer CoOp \\
        --dataset-config-file configs/datasets/eurosat.yaml \\
        --config-file configs/trainers/CoOp/vit_b32.yaml \\
        --output-dir output/eurosat/CoOp/seed1 DATASET.NUM_SHOTS 4
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import torch

from ampt.config import peek_trainer_name, setup_cfg
from ampt.utils import distributed
from ampt.engine.run_config import CONFIG_FILE, write_run_config
from ampt.engine.select import ENGINES, active_api
from ampt.errors import UserError
from ampt.plugins import load_plugins
from ampt.results import RunResults, check_not_finished
from ampt.utils import collect_env_info, set_random_seed, setup_logger
from ampt.utils.cli import DEBUG_FLAG, DEBUG_HELP, OneLineArgumentParser, exit_process, run_cli
from ampt.utils.io import check_path_fits
from ampt.utils.locks import RunLockedError, acquire_run_lock, release_run_lock

logger = logging.getLogger("ampt.train")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=str, default="", help="path to dataset")
    p.add_argument("--output-dir", type=str, default="", help="output directory")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    p.add_argument("--seed", type=int, default=None, help="random seed; any value >= 0 (0 included) fixes it")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="CLIP model name or checkpoint path")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("--engine", choices=ENGINES, default="builtin", help="built-in engine or an installed Dassl")
    p.add_argument("--force", action="store_true",
                   help="re-train a finished run from scratch (old checkpoints and results.json moved aside); "
                        "with --eval-only, replace a finished run's records")
    p.add_argument("--eps", type=float, default=None, help="training attack eps in 1/255 units (ADV.TRAIN.EPS)")
    p.add_argument("--alpha", type=float, default=None, help="training attack step in 1/255 units (ADV.TRAIN.ALPHA)")
    p.add_argument("--steps", type=int, default=None, help="training attack steps (ADV.TRAIN.STEPS)")
    p.add_argument("--adv-prompt", type=str, default=None, help="prompt of the training attack (ADV.TRAIN.PROMPT)")
    p.add_argument("--prompt-alpha", type=float, default=None,
                   help="prompt step of the perturbed modes (ADV.TRAIN.PROMPT_ALPHA)")
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def resolve_trainer_class(args: argparse.Namespace) -> Optional[type]:
    """The registered class of the requested trainer (its config node is added before the yamls)."""
    name = peek_trainer_name(args)
    return active_api().TRAINER_REGISTRY.get(name) if name else None


def _log_run_header(args: argparse.Namespace, cfg) -> None:
    logger.info("** Arguments **")
    for key in sorted(vars(args)):
        logger.info("%s: %s", key, getattr(args, key))
    logger.info("** Config **\n%s", cfg)
    logger.info("** System info **\n%s\n", collect_env_info())


def _write_config(cfg) -> None:
    """An evaluation keeps a training folder's config; training writes its own (trainer.before_train)."""
    if not (Path(cfg.OUTPUT_DIR) / CONFIG_FILE).exists():
        write_run_config(cfg, cfg.OUTPUT_DIR)


def evaluate_only(trainer, args: argparse.Namespace) -> float:
    """Load the registered models' weights from ``--model-dir`` and test; records go to results.json.

    Records carry the checkpoint epoch, model folder and weights digest; a
    finished run's own records are replaced only with ``--force``.
    """
    trainer.record_force = bool(args.force)
    trainer.load_model(args.model_dir, epoch=args.load_epoch)
    accuracy = trainer.test()
    results = RunResults(trainer.output_dir)
    if not results.run and distributed.is_main():
        extra = {"eval_only": True, "model_dir": args.model_dir, "load_epoch": args.load_epoch, "finished": True}
        results.set_run(**{**trainer.run_metadata(), **extra})
    return accuracy


def _start_processes(args: argparse.Namespace, cfg) -> None:
    """Under torchrun: join the process group and check what a multi-process run needs."""
    if not distributed.init_from_env(bool(cfg.USE_CUDA)):
        return
    if args.engine != "builtin":
        raise distributed.DistributedSetupError("torchrun runs need --engine builtin (the Dassl engine is one process)")
    distributed.per_device_batch(cfg.DATALOADER.TRAIN_X.BATCH_SIZE, bool(cfg.DATALOADER.TRAIN_X.PER_DEVICE))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.opts and DEBUG_FLAG in args.opts:  # given after the KEY VALUE overrides
        args.opts.remove(DEBUG_FLAG)
        args.debug = True
    load_plugins(args.engine)
    trainer_cls = resolve_trainer_class(args)
    base_cfg = active_api().get_cfg_default() if args.engine == "dassl" else None
    notes: List[str] = []
    cfg = setup_cfg(args, trainer_cls, base_cfg=base_cfg, notes=notes)
    if cfg.OUTPUT_DIR:
        check_path_fits(cfg.OUTPUT_DIR, "--output-dir")
    _start_processes(args, cfg)
    if not cfg.OUTPUT_DIR or not distributed.is_main():  # rank 0 alone holds the run folder's lock
        return _run(args, cfg, notes)
    try:  # refused at once while another trainer writes this folder
        acquire_run_lock(cfg.OUTPUT_DIR)
    except RunLockedError as err:  # locks.py stays stdlib-only, so its error is not a UserError itself
        raise UserError(str(err)) from None
    try:
        return _run(args, cfg, notes)
    finally:
        release_run_lock(cfg.OUTPUT_DIR)


def _run(args: argparse.Namespace, cfg, notes: List[str]) -> int:
    training = not args.eval_only and not args.no_train
    if training:
        check_not_finished(cfg.OUTPUT_DIR, force=args.force)

    main_rank = distributed.is_main()
    setup_logger(cfg.OUTPUT_DIR if main_rank else None, level=logging.INFO if main_rank else logging.WARNING)
    for note in notes:
        logger.info(note)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    _log_run_header(args, cfg)
    if not training and main_rank:
        _write_config(cfg)
    distributed.barrier()

    trainer = active_api().build_trainer(cfg)
    if distributed.world_size() > 1 and cfg.SEED >= 0:
        set_random_seed(distributed.rank_seed(cfg.SEED))  # ranks draw different augmentations
    trainer.fresh_start = bool(args.force)
    if args.eval_only:
        evaluate_only(trainer, args)
    elif training:
        trainer.train()
    return 0


def cli() -> int:
    """``main`` with a one-line message (no traceback) for errors the user can fix (``--debug``: traceback)."""
    try:
        return run_cli(main, (distributed.DistributedSetupError,))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    exit_process(cli())
