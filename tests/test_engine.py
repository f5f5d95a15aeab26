"""The built-in engine on a linear model and a tiny generated image dataset.

Covers: checkpoint round trip and the refusal of code-running pickles;
interrupt + resume reproducing an uninterrupted run exactly; a finished run
not overwritten unless forced; results.json and the evaluator block; unknown
trainer/dataset names; train.py end to end (seed 0, config.yaml, log.txt,
eval-only); its one-line error for a mistyped trainer.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ampt.api import build_trainer
from ampt.config import get_cfg_default
from ampt.engine.checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from ampt.engine.evaluator import Classification
from ampt.optim import build_lr_scheduler, build_optimizer
from ampt.results import FinishedRunError, RunResults
from ampt.utils.logger import reset_logger
from engine_toys import SPLITS, EngineToyData, EngineToyTrainer, _train_argv, make_cfg, weights  # noqa: F401  (re-exported)


# ----------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = nn.Linear(4, 2)
    cfg = get_cfg_default().OPTIM
    cfg.NAME, cfg.WARMUP_EPOCH, cfg.LR_SCHEDULER, cfg.MAX_EPOCH = "sgd", 1, "cosine", 5
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    state = {"state_dict": model.state_dict(), "epoch": 2, "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "val_result": None}
    path = save_checkpoint(state, tmp_path / "model")
    assert path.name == "model.pth.tar-2"
    assert (tmp_path / "model" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and loaded["scheduler"] == sched.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][k], v)
    momentum = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], momentum)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------- training, resume, finished runs
def test_interrupted_run_resumes_at_the_right_epoch_and_matches(tmp_path, data_root):
    full = build_trainer(make_cfg(data_root, tmp_path / "full"))
    full.train()

    cut = build_trainer(make_cfg(data_root, tmp_path / "cut"))
    cut.stop_at_epoch = 2
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    assert not RunResults(tmp_path / "cut").finished
    assert (tmp_path / "cut" / "linear" / "checkpoint").read_text().strip() == "model.pth.tar-2"

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("ampt.engine.trainer").addHandler(handler)
    try:
        resumed = build_trainer(make_cfg(data_root, tmp_path / "cut"))
        resumed.train()
    finally:
        logging.getLogger("ampt.engine.trainer").removeHandler(handler)
    assert any("RESUMING" in m for m in messages)  # never silent
    assert resumed.start_epoch == 2 and list(resumed.epoch_lrs) == [2]
    assert resumed.epoch_lrs[2] == pytest.approx(full.epoch_lrs[2])
    assert resumed.sched.state_dict() == full.sched.state_dict()
    for k, v in weights(full).items():  # optimizer momentum + schedule restored: identical result
        assert torch.allclose(weights(resumed)[k], v, atol=1e-6)
    assert RunResults(tmp_path / "cut").finished


def test_resume_flag_continues_from_another_folder(tmp_path, data_root):
    cut = build_trainer(make_cfg(data_root, tmp_path / "a", **{"OPTIM.MAX_EPOCH": 2}))
    cut.stop_at_epoch = 1
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = build_trainer(make_cfg(data_root, tmp_path / "b", RESUME=str(tmp_path / "a"), **{"OPTIM.MAX_EPOCH": 2}))
    resumed.train()
    assert resumed.start_epoch == 1 and list(resumed.epoch_lrs) == [1]
    assert (tmp_path / "b" / "linear" / "model.pth.tar-2").is_file()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        build_trainer(make_cfg(data_root, tmp_path / "c", RESUME=str(tmp_path / "empty"))).train()


def test_finished_run_is_not_overwritten_unless_forced(tmp_path, data_root):
    cfg = make_cfg(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 1})
    build_trainer(cfg).train()
    results = RunResults(tmp_path)
    assert results.finished
    assert results.run["seed"] == 0 and results.run["engine"] == "builtin" and results.run["train_eps"] == 0
    [record] = results.records
    assert record["attack"] == "clean" and record["n_samples"] == 2 * SPLITS["test"]
    assert record["eps"] == 0 and record["split"] == "test" and 0 <= record["accuracy"] <= 100

    with pytest.raises(FinishedRunError):
        build_trainer(cfg).train()
    forced = build_trainer(cfg)
    forced.fresh_start = True
    forced.train()
    assert forced.start_epoch == 0 and RunResults(tmp_path).finished
    assert list(tmp_path.glob("results.json.bak-*"))


def test_resume_into_a_run_with_other_settings_is_refused(tmp_path, data_root):
    cut = build_trainer(make_cfg(data_root, tmp_path))
    cut.stop_at_epoch = 1
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    with pytest.raises(RuntimeError, match="seed: 0 -> 1"):
        build_trainer(make_cfg(data_root, tmp_path, SEED=1)).train()


def test_best_val_saves_best_model_and_deploys_it(tmp_path, data_root):
    cfg = make_cfg(data_root, tmp_path, **{"TEST.FINAL_MODEL": "best_val", "OPTIM.MAX_EPOCH": 2})
    trainer = build_trainer(cfg)
    trainer.train()
    best = load_checkpoint(tmp_path / "linear" / "model-best.pth.tar")
    assert best["val_result"] == pytest.approx(trainer.best_result)
    assert (tmp_path / "linear" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    assert [r["split"] for r in RunResults(tmp_path).records] == ["test"]  # val checks are not records


def test_nan_loss_raises(tmp_path, data_root):
    trainer = build_trainer(make_cfg(data_root, tmp_path))
    trainer.nan_at_epoch = 0
    with pytest.raises(FloatingPointError, match="NaN"):
        trainer.train()


def test_unknown_trainer_and_dataset_name_the_closest(tmp_path, data_root):
    with pytest.raises(KeyError, match='Did you mean "EngineToyTrainer"'):
        build_trainer(make_cfg(data_root, tmp_path, **{"TRAINER.NAME": "EngineToyTrainr"}))
    with pytest.raises(KeyError, match='Did you mean "EngineToyData"'):
        build_trainer(make_cfg(data_root, tmp_path, **{"DATASET.NAME": "EngineToyDat"}))


# ----------------------------------------------------------------- evaluator
def test_evaluator_block_reads_as_dassl(caplog):
    cfg = get_cfg_default()
    evaluator = Classification(cfg, lab2cname={0: "a", 1: "b"})
    evaluator.process(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1, 1, 0]))
    log = logging.getLogger("ampt.engine.evaluator")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ampt.engine.evaluator"):
            results = evaluator.evaluate()
    finally:
        log.removeHandler(caplog.handler)
    assert results["accuracy"] == 75.0 and evaluator.total == 4
    block = "=> result\n* total: 4\n* correct: 3\n* accuracy: 75.0%\n* error: 25.0%\n* macro_f1: 73.3%"
    assert block in caplog.text


# ----------------------------------------------------------------- train.py
def test_train_py_end_to_end(tmp_path, data_root, monkeypatch):
    import train
    from ampt.engine.select import use_engine

    monkeypatch.setattr(train, "load_plugins", lambda engine: use_engine(engine))
    out = tmp_path / "run"
    try:
        assert train.main(_train_argv(data_root, out)) == 0
        assert torch.initial_seed() == 0  # --seed 0 is a seed
        saved = (out / "config.yaml").read_text()
        assert "SEED: 0" in saved and "MAX_EPOCH: 2" in saved
        log = (out / "log.txt").read_text()
        assert "=> result\n* total: 8\n" in log and "* macro_f1:" in log and "Finish training" in log
        assert RunResults(out).finished

        with pytest.raises(FinishedRunError):
            train.main(_train_argv(data_root, out))

        ev = tmp_path / "eval"
        argv = _train_argv(data_root, ev, "--eval-only", "--model-dir", str(out), "--load-epoch", "2")
        assert train.main(argv) == 0
        data = json.loads((ev / "results.json").read_text())
        assert data["run"]["eval_only"] and data["run"]["finished"]
        assert data["records"][0]["accuracy"] == RunResults(out).records[0]["accuracy"]
    finally:
        reset_logger()


def test_train_py_mistyped_trainer_is_one_line(monkeypatch, capsys):
    import train
    from ampt.engine.select import use_engine

    monkeypatch.setattr(train, "load_plugins", lambda engine: use_engine(engine))
    monkeypatch.setattr(sys, "argv", ["train.py", "--trainer", "EngineToyTrainr"])
    assert train.cli() == 2
    err = capsys.readouterr().err
    assert 'Unknown trainer "EngineToyTrainr". Did you mean "EngineToyTrainer"?' in err
    assert "Traceback" not in err


# ----------------------------------------------------------------- --engine dassl wiring (Dassl itself is not in CI)
def test_dassl_engine_without_dassl_says_how_to_install(monkeypatch):
    from ampt.engine import dassl_api

    monkeypatch.setitem(sys.modules, "dassl", None)  # import dassl -> ImportError
    with pytest.raises(ImportError, match="git clone https://github.com/KaiyangZhou/Dassl.pytorch"):
        dassl_api.api()


STAND_IN_DASSL = {
    "__init__.py": "",
    "config.py": (
        "from yacs.config import CfgNode as CN\n"
        "def get_cfg_default():\n"
        "    cfg = CN()\n    cfg.OPTIM = CN()\n    cfg.OPTIM.LR = 0.5\n    return cfg\n"
    ),
    "engine.py": (
        "from ampt.registry import Registry\nTRAINER_REGISTRY = Registry('T')\n"
        "def build_trainer(cfg):\n    return None\n"
        "class SimpleTrainer:\n    pass\nclass TrainerX(SimpleTrainer):\n    pass\n"
    ),
    "data/__init__.py": "DataManager = object\n",
    # Dassl's wilds module disables INFO logging at import; the engine must undo it
    "data/datasets.py": (
        "import logging\nlogging.disable(logging.WARNING)\n"
        "from ampt.registry import Registry\nDATASET_REGISTRY = Registry('D')\n"
    ),
}


def test_dassl_engine_wiring_with_a_stand_in_dassl(tmp_path, monkeypatch):
    from ampt.engine import dassl_api
    from ampt.engine.trainer import RunMixin

    for name, text in STAND_IN_DASSL.items():
        (tmp_path / "dassl" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dassl" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        api = dassl_api.api()
        assert logging.root.manager.disable == logging.NOTSET  # INFO logs stay on
        import dassl.data.datasets
        import dassl.engine

        assert api.TRAINER_REGISTRY is dassl.engine.TRAINER_REGISTRY
        assert api.DATASET_REGISTRY is dassl.data.datasets.DATASET_REGISTRY
        assert issubclass(api.TrainerX, dassl.engine.TrainerX) and issubclass(api.TrainerX, RunMixin)
        mro = api.TrainerX.__mro__
        assert mro.index(RunMixin) < mro.index(dassl.engine.TrainerX) and api.TrainerX.engine_name == "dassl"
        cfg = api.get_cfg_default()
        assert cfg.OPTIM.LR == 0.5 and cfg.ADV.TRAIN.EPS == 4.0 and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    finally:
        logging.disable(logging.NOTSET)
        for name in [m for m in sys.modules if m == "dassl" or m.startswith("dassl.")]:
            del sys.modules[name]


def test_macro_f1_equals_scikit_learns():
    import numpy as np
    from sklearn.metrics import f1_score

    from ampt.engine.evaluator import macro_f1_score

    rng = np.random.RandomState(0)
    for n_classes in (2, 5, 11):
        y_true, y_pred = rng.randint(0, n_classes, 200), rng.randint(0, n_classes + 2, 200)
        y_pred[:50] = y_true[:50]
        expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0)
        assert abs(macro_f1_score(y_true, y_pred) - expected) < 1e-12
