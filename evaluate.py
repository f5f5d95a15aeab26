#!/usr/bin/env python
"""Evaluate a trained run, clean and under attack, and append the records to its results.json.

Examples::

    python evaluate.py output/apt/eurosat/.../seed1 --attack clean pgd cw tpgd aa --eps 4
    python evaluate.py RUN_DIR --attack pgd --steps 100 --n-samples 5000 --dataset ImageNetR
    python evaluate.py RUN_DIR --attack clean pgd --prompt "a photo of a {}."
    python evaluate.py RUN_DIR --attack clean pgd --subsample new   # base-to-new
    python evaluate.py RUN_DIR --attack aa-custom --aa-attacks apgd-ce,apgd-t --eps 1
    python evaluate.py RUN_DIR --attack pgd apgd-t --restarts 5 --image-ids ids.txt
    python evaluate.py RUN_DIR --attack clean pgd --test-time tapt --threat non-adaptive adaptive

RUN_DIR may also be a folder written by python -m ampt.export (an exported
model, evaluated on the test set it names; --root gives the data folder).

eps and alpha are in 1/255 units (4 means 4/255). The eps defaults to the
run's training eps (adversarial trainers); other runs need --eps. A record
already in results.json (same dataset, split, attack, eps, steps, n_samples,
prompt, subsample, alpha, seed, precision, restarts, EOT, attack list, BPDA,
image list) of the same weights is skipped unless --force; one of another
checkpoint is recomputed. Several evaluate.py
processes may write to one run. An interrupted evaluation resumes at its
first unfinished batch.

On many GPUs: ``torchrun --nproc_per_node N evaluate.py RUN ...`` attacks
disjoint shards of the test set (whole batches) and gives exactly the
one-process accuracy; rank 0 writes the records.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import torch

from ampt.attacks import ATTACK_REGISTRY, DEFAULT_STEPS, check_eps
from ampt.deploy.as_run import is_artifact, load_exported_run
from ampt.data.splits import SUBSAMPLE_CHOICES
from ampt.utils import distributed
from ampt.errors import UserError, UserFileNotFoundError
from ampt.evaluation.evaluate_cli import EvalPlan, TestTimePlan, evaluate_trainer, results_table
from ampt.models.interface import LEARNED
from ampt.precision import EVAL_PRECISIONS
from ampt.results import RunResults
from ampt.evaluation.robust_accuracy import CLEAN, AttackSpec
from ampt.evaluation.run_loader import load_run
from ampt.utils import setup_logger
from ampt.utils.cli import DEBUG_FLAG, DEBUG_HELP, OneLineArgumentParser, exit_process, run_cli
from ampt.tta import THREATS, TTA_REGISTRY

logger = logging.getLogger("ampt.evaluate")

LOG_FILE = "evaluate_log.txt"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder written by train.py (config.yaml, checkpoints)")
    p.add_argument("--attack", nargs="+", default=[CLEAN, "pgd"],
                   help="clean and/or attack names: " + " ".join(ATTACK_REGISTRY.registered_names())
                        + " (default: clean pgd)")
    p.add_argument("--eps", type=float, default=None, help="L-inf budget in 1/255 units (default: the run's training eps)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"iterations of pgd/cw/tpgd/apgd-*/fab-t (default {DEFAULT_STEPS}), queries of square "
                        "(default 5000); AutoAttack's versions fix theirs")
    p.add_argument("--alpha", type=float, default=None, help="step size of pgd/cw/tpgd in 1/255 units (default eps/4)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts (pgd/cw/tpgd, apgd-ce/dlr/t, square)")
    p.add_argument("--eot-iter", type=int, default=1,
                   help="EOT: gradients averaged over N forward passes per step, for a model with random parts "
                        "(pgd/cw/tpgd, apgd-ce/dlr/t; aa-rand has 20)")
    p.add_argument("--aa-attacks", default="", metavar="LIST",
                   help="aa-custom's attacks, comma-separated, e.g. apgd-ce,apgd-t (FARE) or apgd-ce,apgd-dlr (FAP)")
    p.add_argument("--bpda", action="store_true",
                   help="attack through the model's declared non-differentiable parts by their declared backward")
    p.add_argument("--image-ids", type=Path, default=None, metavar="FILE",
                   help="evaluate exactly these test images: one relative path per line (RobustBench's format)")
    p.add_argument("--dataset", default=None, help="evaluate on another registered dataset (cross-dataset)")
    p.add_argument("--subsample", choices=SUBSAMPLE_CHOICES, default=None,
                   help="classes of the test set: base (first half), new (second half) or all "
                        "(CoOp's base-to-new; default: the classes the run was trained on)")
    p.add_argument("--n-samples", type=int, default=None, help="a fixed, seeded subset of the test set of this size")
    p.add_argument("--batch-size", type=int, default=None, help="test batch size (default: the run's DATALOADER.TEST.BATCH_SIZE)")
    p.add_argument("--prompt", default=LEARNED,
                   help='"learned" (the run\'s prompts; default), a template such as "a photo of a {}." '
                        "(zero-shot on the same backbone), or a mode the trainer adds")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the attacks' random starts")
    p.add_argument("--load-epoch", type=int, default=None, help="checkpoint epoch (default: the model the run deployed)")
    p.add_argument("--root", default="", help="dataset root (default: the run's DATASET.ROOT)")
    p.add_argument("--force", action="store_true", help="recompute records that results.json already holds")
    p.add_argument("--precision", choices=EVAL_PRECISIONS, default="fp32",
                   help="precision of the forward passes and attack gradients (default fp32; bf16/fp16 are "
                        "recorded and can overstate robustness)")
    p.add_argument("--test-time", nargs="+", default=None, choices=TTA_REGISTRY.registered_names(), metavar="METHOD",
                   help=f"adapt the learned prompts per test image: {', '.join(TTA_REGISTRY.registered_names())} "
                        "(several share each non-adaptive attack; docs/test_time.md)")
    p.add_argument("--test-time-options", default="", metavar="K=V,...",
                   help="the method's settings over its paper's defaults, e.g. views=32,lr=0.001")
    p.add_argument("--threat", nargs="+", choices=THREATS, default=["non-adaptive"],
                   help="with --test-time: non-adaptive (attack made on the run's model, the papers' protocol) "
                        "and/or adaptive (attack through the adaptation)")
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return p


def _specs(args: argparse.Namespace, train_eps: Optional[float]) -> List[AttackSpec]:
    attacks = list(dict.fromkeys(args.attack))
    needs_eps = any(a != CLEAN for a in attacks)
    eps = args.eps if args.eps is not None else train_eps
    if needs_eps and eps is None:
        raise UserError("This run was not trained adversarially: give the attack budget with --eps (1/255 units)")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"--steps must be >= 0 (got {args.steps})")
    if args.aa_attacks and "aa-custom" not in attacks:
        raise UserError("--aa-attacks is the attack list of aa-custom: add aa-custom to --attack")
    specs = []
    for name in attacks:
        if name == CLEAN:
            specs.append(AttackSpec(CLEAN))
            continue
        cls = ATTACK_REGISTRY.get(name)
        specs.append(AttackSpec(
            name, eps=eps or 0.0, steps=args.steps if cls.default_steps is not None else None,
            alpha=args.alpha if cls.takes_alpha else None,
            restarts=args.restarts if cls.takes_restarts else 1,
            eot_iter=args.eot_iter if cls.takes_eot else 1,
            options=args.aa_attacks if cls.takes_options else "", bpda=args.bpda))
    # A setting applies to the listed attacks that take it; one that no listed attack takes is refused.
    for flag, value, default, takes in (("--restarts", args.restarts, 1, "takes_restarts"),
                                        ("--eot-iter", args.eot_iter, 1, "takes_eot"),
                                        ("--alpha", args.alpha, None, "takes_alpha")):
        if value != default and not any(getattr(ATTACK_REGISTRY.get(a), takes) for a in attacks if a != CLEAN):
            valid = [n for n in ATTACK_REGISTRY.registered_names() if getattr(ATTACK_REGISTRY.get(n), takes)]
            raise UserError(f"{flag} applies to none of --attack {' '.join(attacks)}; attacks that take it: "
                            f"{', '.join(valid)}")
    return specs


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eps is not None:
        check_eps(args.eps, "--eps")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0 (got {args.seed})")
    test_time = TestTimePlan(tuple(args.test_time), args.test_time_options, tuple(dict.fromkeys(args.threat))) \
        if args.test_time else None
    run_dir = args.run_dir
    exported = is_artifact(run_dir)
    if not exported and not (run_dir / "config.yaml").is_file():  # before anything is created there
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise UserFileNotFoundError(f"{run_dir} {what}: RUN_DIR must be a run folder written by train.py")
    distributed.init_from_env(use_cuda=torch.cuda.is_available())
    main_rank = distributed.is_main()
    setup_logger(run_dir / LOG_FILE if main_rank else None, level=logging.INFO if main_rank else logging.WARNING)
    results = RunResults(run_dir)
    if not exported and results.path.exists() and not results.finished:
        logger.warning("%s does not say the run finished: evaluating its latest checkpoint", results.path)
    loader = load_exported_run if exported else load_run
    run = loader(run_dir, dataset=args.dataset, root=args.root, batch_size=args.batch_size,
                 load_epoch=args.load_epoch, seed=args.seed, subsample=args.subsample)
    cfg = run.trainer.cfg
    specs = _specs(args, float(cfg.ADV.TRAIN.EPS) if run.adversarial else None)
    if args.image_ids is not None and args.n_samples is not None:
        raise UserError("--image-ids and --n-samples both choose the test images: give one of them")
    plan = EvalPlan(specs=specs, prompt=args.prompt, n_samples=args.n_samples, seed=args.seed,
                    batch_size=args.batch_size, force=args.force, precision=args.precision,
                    image_ids=args.image_ids, test_time=test_time)
    loaded = getattr(run.trainer, "loaded_checkpoint", None) or {}
    extra = {"checkpoint_epoch": loaded.get("checkpoint_epoch", run.epoch)}
    if cfg.DATASET.NAME != run.train_dataset:
        extra["train_dataset"] = run.train_dataset
    rows = evaluate_trainer(run.trainer, plan, results, extra=extra)
    if main_rank:
        print(results_table(rows))
    return 0


def cli() -> int:
    """``main`` with a one-line message (no traceback) for errors the user can fix."""
    try:
        return run_cli(main)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    exit_process(cli())
