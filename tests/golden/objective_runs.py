"""Tiny training runs whose losses and learned tensors pin the training objectives bit for bit.

``python tests/golden/objective_runs.py OUT.pt`` records them (it was run on
the commit before the objectives package existed); ``test_objective_golden``
re-runs them and asserts equality with ``torch.equal``.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CONFIGS = HERE.parent.parent / "configs" / "trainers"
STEPS = 3
# name -> (trainer, config file, KEY VALUE overrides)
RUNS: Dict[str, Tuple[str, str, List[str]]] = {
    "CoOp": ("CoOp", "CoOp/digits.yaml", []),
    "APT-ce": ("APT", "APT/digits.yaml", []),
    "APT-ce-perturbed": ("APT", "APT/digits.yaml", ["ADV.TRAIN.PROMPT", "perturbed"]),
    "APT-trades": ("APT", "APT/digits.yaml", ["ADV.TRAIN.LOSS", "trades", "ADV.TRAIN.TRADES_BETA", "2.0"]),
    "APT-fap": ("APT", "APT/digits.yaml", ["ADV.TRAIN.LOSS", "fap"]),
    # recorded with APT's projection, the FAP family's training attack before its configs chose FAP's
    "FAP": ("FAP", "FAP/digits.yaml", ["ADV.TRAIN.PROJECTION", "apt"]),
    "AdvVP": ("AdvVP", "AdvVP/digits.yaml", ["ADV.TRAIN.PROJECTION", "apt"]),
    "AMPT": ("AMPT", "AMPT/digits.yaml", []),
    "AMPT-terms": ("AMPT", "AMPT/digits.yaml", ["TRAINER.AMPT.CLEAN_CE_WEIGHT", "0.5", "TRAINER.AMPT.TRADES_KL_WEIGHT",
                                                "1.0", "TRAINER.AMPT.BALANCE_WEIGHT", "0.1"]),
}


def record_run(toy_env, out: Path, trainer_name: str, config: str, opts: List[str]) -> Dict[str, torch.Tensor]:
    """Losses of ``STEPS`` training steps on one batch, then every learned tensor."""
    from test_apt import make_trainer  # the toy data set and the tiny CLIP of the APT tests

    trainer = make_trainer(toy_env, out, trainer=trainer_name, config=CONFIGS / config, opts=opts)
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    losses = []
    for step in range(STEPS):
        trainer.batch_idx, trainer.num_batches, trainer.epoch = 0, 2, 0
        torch.manual_seed(step)
        losses.append(trainer.forward_backward(batch)["loss"])
    tensors = {"losses": torch.tensor(losses, dtype=torch.float64)}
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            tensors[f"param.{name}"] = param.detach().clone()
    return tensors


def record_all(toy_env, tmp: Path) -> Dict[str, Dict[str, torch.Tensor]]:
    return {name: record_run(toy_env, tmp / name, *run) for name, run in RUNS.items()}


def main(out: str) -> None:
    from test_apt import pretrain_toy_clip, write_toy_data
    from ampt.models import save_clip_state_dict

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = write_toy_data(base / "data")
        env = (root, save_clip_state_dict(pretrain_toy_clip(root), base / "tiny_clip.pt"))
        runs = record_all(env, base / "runs")
    flat = {f"{run}/{key}": value for run, tensors in runs.items() for key, value in tensors.items()}
    torch.save(flat, out)
    for run, tensors in runs.items():
        print(run, tensors["losses"].tolist())


if __name__ == "__main__":
    main(sys.argv[1])
