"""``python -m ampt.audit RUN``: is this run's robustness number real? Checks for the signs of overstated robustness.

Runs on a fixed, seeded subset of the run's test images (200 by default;
``--image-ids FILE`` for a list) and writes an ``audit`` entry to the run's
results.json: determinism, gradient health, convergence (PGD-100 against
PGD-500 with 5 restarts), black-box (Square, 5,000 queries, against every
white-box attack), large eps (64/255), transfer (attacks made on the frozen
zero-shot CLIP of the same backbone), and the parts the model declares
(BPDA, EOT). Each check says pass or flag with its numbers; a flag never
removes or hides a record. An audit of the same weights and settings is not
repeated without --force.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..attacks import check_eps
from ..engine.checkpoint import weights_digest
from ..errors import UserError, UserFileNotFoundError
from ..evaluation.evaluate_cli import EvalPlan, evaluated_images, subset_loader
from ..evaluation.evaluated_prompt import prompt_model, record_prompt
from ..evaluation.run_loader import load_run
from ..models.interface import LEARNED
from ..models.templates import get_template
from ..results import RunResults
from ..utils import setup_logger
from ..utils.cli import OneLineArgumentParser, exit_process, run_cli
from .checks import CHECKS, AuditSettings
from .runner import audit_table, check_names, run_audit

logger = logging.getLogger("ampt.audit")
LOG_FILE = "audit_log.txt"
# Fields that make two audits the same audit (with the settings).
AUDIT_KEY = ("weights", "prompt", "eps", "n_samples", "seed", "images_sha256", "precision")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m ampt.audit", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    p.add_argument("--eps", type=float, default=None, help="budget in 1/255 units (default: the run's training eps)")
    p.add_argument("--n-samples", type=int, default=200, help="audited test images, a seeded subset (default 200)")
    p.add_argument("--image-ids", type=Path, default=None, metavar="FILE", help="audit exactly these test images")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the attacks (default 0)")
    p.add_argument("--prompt", default=LEARNED, help='the prompt audited: "learned" (default), a template or a mode')
    p.add_argument("--transfer-from", default=None, metavar="TEMPLATE",
                   help='the zero-shot template transfer attacks are made with (default: the dataset\'s; "none" skips)')
    p.add_argument("--checks", nargs="+", default=None, help=f"a subset of: {' '.join(CHECKS)}")
    p.add_argument("--strong-steps", type=int, default=500, help="steps of the convergence check's PGD (default 500)")
    p.add_argument("--restarts", type=int, default=5, help="restarts of the convergence check's PGD (default 5)")
    p.add_argument("--queries", type=int, default=5000, help="Square's queries (default 5000)")
    p.add_argument("--pgd-steps", type=int, default=100, help="steps of the reference PGD (default 100)")
    p.add_argument("--large-eps", type=float, default=64.0,
                   help="the large-eps check's budget in 1/255 units (default 64; raise it for synthetic classes "
                        "that differ by more than twice it in every pixel)")
    p.add_argument("--batch-size", type=int, default=None, help="images per attack batch (default: the run's test batch)")
    p.add_argument("--load-epoch", type=int, default=None, help="checkpoint epoch (default: the deployed model)")
    p.add_argument("--root", default="", help="dataset root (default: the run's DATASET.ROOT)")
    p.add_argument("--force", action="store_true", help="audit again although results.json holds this audit")
    return p


def audit_key(entry: Dict[str, Any]) -> tuple:
    settings = {k: v for k, v in entry.get("settings", {}).items() if k != "batch_size"}
    return tuple(entry.get(k) for k in AUDIT_KEY) + (repr(sorted(settings.items())),)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir
    if not (run_dir / "config.yaml").is_file():
        raise UserFileNotFoundError(f"{run_dir} has no config.yaml: RUN_DIR must be a run folder written by train.py")
    if args.eps is not None:
        check_eps(args.eps, "--eps")
    for flag, value, low in (("--n-samples", args.n_samples, 1), ("--strong-steps", args.strong_steps, 1),
                             ("--restarts", args.restarts, 1), ("--queries", args.queries, 1), ("--seed", args.seed, 0),
                             ("--pgd-steps", args.pgd_steps, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low} (got {value})")
    checks = check_names(args.checks)
    setup_logger(run_dir / LOG_FILE)
    run = load_run(run_dir, root=args.root, batch_size=args.batch_size, load_epoch=args.load_epoch, seed=args.seed)
    trainer = run.trainer
    eps = args.eps if args.eps is not None else (float(trainer.cfg.ADV.TRAIN.EPS) if run.adversarial else None)
    if not eps:
        raise UserError("This run was not trained adversarially: give the audit's budget with --eps (1/255 units)")
    results = RunResults(run_dir)
    plan = EvalPlan(specs=[], n_samples=None if args.image_ids else args.n_samples, seed=args.seed,
                    image_ids=args.image_ids)
    chosen = evaluated_images(trainer, plan, run_dir)
    settings = AuditSettings(eps=eps, seed=args.seed, batch_size=args.batch_size or trainer.cfg.DATALOADER.TEST.BATCH_SIZE,
                             pgd_steps=args.pgd_steps, strong_steps=args.strong_steps, strong_restarts=args.restarts,
                             large_eps=check_eps(args.large_eps, "--large-eps"),
                             square_queries=args.queries, checks=checks)
    loaded = getattr(trainer, "loaded_checkpoint", None) or {}
    provenance = {"weights": weights_digest(trainer), "checkpoint_epoch": loaded.get("checkpoint_epoch", run.epoch),
                  "prompt": record_prompt(trainer, args.prompt), "eps": eps, "seed": args.seed, "precision": "fp32",
                  "n_samples": len(chosen.indices), **chosen.provenance}
    probe = {**provenance, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                        for k, v in settings.__dict__.items()}}
    stored = [e for e in results.load().get("audit", []) if audit_key(e) == audit_key(probe)]
    if stored and not args.force:
        logger.info("results.json already holds this audit (--force repeats it)")
        print(audit_table(stored[-1]))
        return 0
    images, labels = _tensors(subset_loader(trainer.test_loader, chosen.indices, settings.batch_size), trainer.device)
    model = prompt_model(trainer, args.prompt).to(trainer.device).eval()
    template = args.transfer_from or get_template(trainer.cfg.DATASET.NAME)
    source = None if template == "none" else prompt_model(trainer, template).to(trainer.device).eval()
    entry = {**provenance, **run_audit(model, images, labels, trainer.num_classes, settings, source)}
    entry["transfer_source"] = None if source is None else f"zero-shot, template {template!r}"
    results.add_audit(entry, replace=audit_key, force=args.force)
    print(audit_table(entry))
    print(f"audit: {entry['status']} ({', '.join(entry['flags']) or 'no flags'}), {entry['n_samples']} images, "
          f"{entry['seconds']:.1f} s; written to {results.path}")
    return 0


@torch.no_grad()
def _tensors(loader: Any, device: torch.device) -> tuple:
    images, labels = [], []
    for batch in loader:
        images.append(batch["img"].to(device))
        labels.append(batch["label"].to(device))
    return torch.cat(images), torch.cat(labels)


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    exit_process(cli())
