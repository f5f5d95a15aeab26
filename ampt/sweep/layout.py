"""The run-folder layout, owned here and shared by the sweep runner and ``scripts/*.sh``.

A run folder encodes every setting of its ``train.py`` command line::

    <output>/<trainer lower-cased>/<dataset id>/shots_<K>/<config tag>/[<method tag>/][<attack tag>/][<extra tag>/]seed<S>

- dataset id and config name: the stems of ``--dataset-config-file`` and ``--config-file``;
- config tag: ``<config name>``, plus ``_ep<E>`` when ``OPTIM.MAX_EPOCH`` is overridden,
  ``_bb-<name>`` when ``MODEL.BACKBONE.NAME`` is, ``_robust-<name>`` when
  ``MODEL.BACKBONE.ROBUST_WEIGHTS`` is;
- method tag: the trainer's own, ``run_folder_tag(cfg)`` of the keys it declares in
  ``run_folder_keys`` (CoOp and APT ``nctx<N>_csc<C>_ctp<P>``; AMPT every ``TRAINER.AMPT``
  setting); none for a trainer that declares no keys;
- attack tag (adversarial trainers): ``eps_<E>_alpha<A>_steps<S>_<PROMPT>[_palpha<P>]``;
- extra tag: every other overridden key, ``KEY-VALUE`` joined by ``_``.

A level longer than 255 bytes (many overridden keys) keeps its first bytes and
ends in ``~`` and 12 hex digits of the whole level's SHA-1 (:func:`fit_component`);
the run's ``config.yaml`` holds every setting.

``python -m ampt.sweep.layout --output ROOT train.py-arguments...`` prints the
folder of a command line (what the shell scripts call); ``--seed "1 2 3"``
prints one folder per seed, in that order, from one process.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import List, Optional, Sequence, Set

from yacs.config import CfgNode as CN

OptPairs = Sequence[str]
MAX_COMPONENT_BYTES = 255  # a path component's limit on common file systems (ext4, xfs, APFS, NTFS)
ADV_TRAIN_KEYS = ("ADV.TRAIN.EPS", "ADV.TRAIN.ALPHA", "ADV.TRAIN.STEPS", "ADV.TRAIN.PROMPT", "ADV.TRAIN.PROMPT_ALPHA")
FILE_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt", ".safetensors")
# train.py flag -> config key, for command lines that use APT's flags.
FLAG_KEYS = (("eps", "ADV.TRAIN.EPS"), ("alpha", "ADV.TRAIN.ALPHA"), ("steps", "ADV.TRAIN.STEPS"),
             ("adv_prompt", "ADV.TRAIN.PROMPT"), ("prompt_alpha", "ADV.TRAIN.PROMPT_ALPHA"),
             ("backbone", "MODEL.BACKBONE.NAME"))


def num(value: float) -> str:
    """A number as folder names write it: 4.0 -> "4", 2.67 -> "2.67"."""
    return f"{float(value):g}"


def file_tag(name: str) -> str:
    """A file or a CLIP name as a folder-name part: "a/b.pth.tar" -> "b", "ViT-B/32" -> "ViT-B-32"."""
    path = Path(name)
    if path.exists() or path.suffix in FILE_SUFFIXES:  # a file that is not there yet keeps its tag
        base = path.name
        base = base[: -len(".pth.tar")] if base.endswith(".pth.tar") else base
        return base.rsplit(".", 1)[0] if "." in base else base
    return name.replace("/", "-")


def default_alpha(eps: float) -> float:
    """APT's training step, 2/3 of eps, rounded to two decimals as the scripts pass it (4 -> 2.67)."""
    return round(float(eps) * 2 / 3, 2)


def epochs_for(dataset: str, shots: int) -> int:
    """CoOp's epochs by shots: 1 shot 50, 2-4 shots 100, 8+ 200; ImageNet 50."""
    if dataset.lower() == "imagenet" or shots == 1:
        return 50
    return 100 if 2 <= shots <= 4 else 200


def _attack_tag(cfg: CN, overridden: Set[str]) -> str:
    adv = cfg.ADV.TRAIN
    alpha = default_alpha(adv.EPS) if float(adv.ALPHA) == -1 else adv.ALPHA
    tag = f"eps_{num(adv.EPS)}_alpha{num(alpha)}_steps{adv.STEPS}_{adv.PROMPT}"
    if "ADV.TRAIN.PROMPT_ALPHA" in overridden:
        tag += f"_palpha{num(adv.PROMPT_ALPHA)}"
    return tag


def _config_tag(config_file: str, cfg: CN, overridden: Set[str]) -> str:
    tag = Path(config_file).stem
    if "OPTIM.MAX_EPOCH" in overridden:
        tag += f"_ep{cfg.OPTIM.MAX_EPOCH}"
    if "MODEL.BACKBONE.NAME" in overridden:
        tag += f"_bb-{file_tag(cfg.MODEL.BACKBONE.NAME)}"
    if "MODEL.BACKBONE.ROBUST_WEIGHTS" in overridden:
        tag += f"_robust-{file_tag(cfg.MODEL.BACKBONE.ROBUST_WEIGHTS)}"
    return tag


def _extra_tag(opts: OptPairs, encoded: Set[str]) -> str:
    parts = [f"{key}-{value}" for key, value in zip(opts[0::2], opts[1::2]) if key not in encoded]
    return "_".join(parts).replace("/", "-").replace(" ", "").replace("*", "x")  # "ce+0.5*zs_kl" -> "ce+0.5xzs_kl"


def fit_component(name: str, limit: int = MAX_COMPONENT_BYTES) -> str:
    """``name`` as one path component of at most ``limit`` bytes: a longer one keeps a readable prefix
    and ends in ``~`` + 12 hex digits of its SHA-1, so distinct settings stay distinct folders."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    prefix = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{prefix}~{digest}"


def run_dir(output: str, trainer: str, dataset_config: str, config_file: str, seed: int,
            opts: OptPairs, cfg: CN, adversarial: bool, method_tag: str = "",
            method_keys: Sequence[str] = ()) -> Path:
    """The folder of a run; ``cfg`` is its merged config, ``opts`` its ``KEY VALUE`` overrides.

    ``method_tag`` and ``method_keys``: the trainer's ``run_folder_tag(cfg)`` and ``run_folder_keys``.
    """
    overridden = set(opts[0::2])
    encoded = {"DATASET.NUM_SHOTS", "OPTIM.MAX_EPOCH", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.ROBUST_WEIGHTS", "SEED"}
    parts: List[str] = [trainer.lower(), Path(dataset_config).stem, f"shots_{cfg.DATASET.NUM_SHOTS}",
                        _config_tag(config_file, cfg, overridden)]
    if method_tag:
        parts.append(method_tag)
        encoded |= set(method_keys)
    if adversarial:
        parts.append(_attack_tag(cfg, overridden))
        encoded |= set(ADV_TRAIN_KEYS)
    extra = _extra_tag(opts, encoded)
    if extra:
        parts.append(extra)
    return Path(output).joinpath(*(fit_component(p) for p in parts), f"seed{seed}")


def flags_to_opts(args: argparse.Namespace) -> List[str]:
    """train.py's APT flags and ``--backbone`` as ``KEY VALUE`` pairs, then the trailing overrides."""
    opts: List[str] = []
    for attr, key in FLAG_KEYS:
        value = getattr(args, attr, None)
        if value not in (None, ""):
            opts += [key, str(value)]
    return opts + list(args.opts or [])


def build_parser() -> argparse.ArgumentParser:
    from ..utils.cli import OneLineArgumentParser

    p = OneLineArgumentParser(prog="python -m ampt.sweep.layout", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="root of the run folders")
    for flag in ("--root", "--trainer", "--dataset-config-file", "--config-file", "--backbone", "--adv-prompt"):
        p.add_argument(flag, default="")
    p.add_argument("--seed", required=True, help='a seed, or several in one argument ("1 2 3"): a folder each')
    for flag in ("--eps", "--alpha", "--prompt-alpha"):
        p.add_argument(flag, type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, as for train.py")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from .runspec import RunSpec

    parser = build_parser()
    args = parser.parse_args(argv)
    seeds = args.seed.split()
    if not seeds or not all(re.fullmatch(r"-?\d+", s) for s in seeds):
        parser.error(f"--seed {args.seed!r}: whole numbers, one or several separated by spaces")
    for seed in seeds:
        spec = RunSpec(trainer=args.trainer, dataset_config=args.dataset_config_file, config=args.config_file,
                       seed=int(seed), opts=tuple(flags_to_opts(args)), data_root=args.root)
        print(spec.run_dir(args.output))
    return 0


if __name__ == "__main__":
    from ampt.utils.cli import exit_process, run_cli
    from ampt.config import ConfigKeyError

    exit_process(run_cli(main, (ConfigKeyError, FileNotFoundError, ValueError)))
