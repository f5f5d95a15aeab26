"""Faults a user meets before any accuracy is real: backbones without their weights, weights of another
architecture, a truncated final checkpoint of a finished run, broken plug-in files (issue 25).

Each is refused in one line naming the file (or warned about, for a plug-in no command asks for);
none may fall back on a random backbone or an older epoch.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ampt.api import DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer
from ampt.errors import UserError
from ampt.models import load_clip
from ampt.models.tiny import TINY_OPEN_CLIP_CFG, build_tiny_clip, build_tiny_open_clip, save_open_clip_folder
from engine_toys import _train_argv, make_cfg  # the linear toy trainer (data_root: conftest)

ARCH = "ampt-tiny-faults"
WIDE_TEXT_CFG = {**TINY_OPEN_CLIP_CFG, "text_cfg": {**TINY_OPEN_CLIP_CFG["text_cfg"], "width": 128, "heads": 2}}


def _one_line(err: pytest.ExceptionInfo, *parts: object) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message, message
    for part in parts:
        assert str(part) in message, message
    return message


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    """``open_clip:ampt-tiny-faults`` registered with open_clip, and a weights file of that architecture."""
    import open_clip  # here, not at collection: a second of imports for every test worker

    base = tmp_path_factory.mktemp("faults_arch")
    (base / "configs").mkdir()
    (base / "configs" / f"{ARCH}.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(base / "configs")
    torch.save(build_tiny_open_clip().state_dict(), base / "tiny.pt")
    return base / "tiny.pt"


# ----------------------------------------------------------------- 1. weights or a refusal, on every path

def test_open_clip_folder_without_its_weights_is_refused(tmp_path):
    folder = save_open_clip_folder(build_tiny_open_clip(), tmp_path / "partial")
    (folder / "open_clip_pytorch_model.bin").unlink()  # a partial download: the config alone
    with pytest.raises(FileNotFoundError) as err:
        load_clip(str(folder))
    _one_line(err, folder, "no weights file", "open_clip_pytorch_model.bin", "randomly initialised")


def test_train_refuses_a_folder_without_weights_in_one_line(toy_env, tmp_path, monkeypatch, capsys):
    import train

    folder = save_open_clip_folder(build_tiny_open_clip(), tmp_path / "partial")
    (folder / "open_clip_pytorch_model.bin").unlink()
    root, _ = toy_env
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--root", str(root), "--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/digits.yaml",
        "--output-dir", str(tmp_path / "run"), "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(folder)])
    assert train.cli() == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and str(folder) in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_hub_model_whose_weights_do_not_come_is_refused(monkeypatch):
    """open_clip only warns (to the root logger) when a hub repository's weights fail to download."""
    import open_clip

    config = {"model_cfg": copy.deepcopy(TINY_OPEN_CLIP_CFG), "preprocess_cfg": {}}
    monkeypatch.setattr(open_clip.factory, "_get_hf_config", lambda model_id, cache_dir=None: copy.deepcopy(config))

    def no_weights(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", no_weights)
    with pytest.raises(UserError) as err:
        load_clip("hf-hub:someone/tiny-clip")
    _one_line(err, "hf-hub:someone/tiny-clip", "found no weights", "randomly initialised")


@pytest.mark.parametrize("layout", ["folder", "arch_and_file"])
def test_truncated_open_clip_weights_are_named(arch, tmp_path, layout):
    folder = save_open_clip_folder(build_tiny_open_clip(), tmp_path / "m")
    weights = folder / "open_clip_pytorch_model.bin"
    if layout == "arch_and_file":
        weights = Path(tmp_path / "tiny.pt")
        weights.write_bytes(arch.read_bytes())
    _truncate(weights)
    with pytest.raises(UserError) as err:
        if layout == "folder":
            load_clip(str(folder))
        else:
            load_clip(f"open_clip:{ARCH}", pretrained=str(weights))
    _one_line(err, weights, "truncated")


def test_clip_package_file_that_is_not_a_whole_clip_is_refused(tmp_path):
    state = build_tiny_clip().state_dict()
    del state["visual.proj"], state["text_projection"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError) as err:  # still a RuntimeError, as before; now also a one-line UserError
        load_clip(str(tmp_path / "partial.pt"))
    _one_line(err, tmp_path / "partial.pt", "does not hold the weights of a CLIP model")


def test_openai_weights_that_do_not_download_are_refused_in_one_line(tmp_path, monkeypatch):
    import urllib.error

    import clip

    def offline(url, root):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(UserError) as err:
        load_clip("ViT-B/32", download_root=str(tmp_path))
    _one_line(err, "ViT-B/32", tmp_path, "name resolution")


def test_a_folder_without_open_clip_config_is_named(tmp_path):
    (tmp_path / "weights_only").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_clip(str(tmp_path / "weights_only"))
    _one_line(err, tmp_path / "weights_only", "without open_clip_config.json")


# ----------------------------------------------------------------- open_clip weights of another architecture

@pytest.mark.parametrize("layout", ["folder", "arch_and_file"])
def test_weights_of_another_architecture_are_refused_in_one_line(arch, tmp_path, layout):
    wide = build_tiny_open_clip(WIDE_TEXT_CFG)
    if layout == "folder":  # the config says the tiny architecture, the weights are of a wider text tower
        weights = save_open_clip_folder(wide, tmp_path / "m", TINY_OPEN_CLIP_CFG) / "open_clip_pytorch_model.bin"
        name, pretrained = str(weights.parent), ""
    else:
        weights = tmp_path / "wide.pt"
        torch.save(wide.state_dict(), weights)
        name, pretrained = f"open_clip:{ARCH}", str(weights)
    with pytest.raises(UserError) as err:  # open_clip raises an AssertionError ("text pos_embed width changed!")
        load_clip(name, pretrained=pretrained)
    _one_line(err, weights, "another architecture")


# ----------------------------------------------------------------- 5. a finished run's final checkpoint

def _finished_run(data_root, out: Path, **over) -> Path:
    build_trainer(make_cfg(data_root, out, **over)).train()
    return out


def test_truncated_final_checkpoint_of_a_finished_run_is_an_error(data_root, tmp_path, monkeypatch, capsys):
    import evaluate
    from ampt.evaluation.run_loader import load_run

    run = _finished_run(data_root, tmp_path / "run")
    final = run / "linear" / "model.pth.tar-3"
    _truncate(final)
    with pytest.raises(UserError) as err:
        load_run(run)  # before: epoch 2, silently, and its records stored as the finished run's
    _one_line(err, final, "finished run's final checkpoint", "whole epochs there: 1, 2")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", str(run), "--attack", "clean"])
    assert evaluate.cli() == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and str(final) in stderr
    assert load_run(run, load_epoch=2).trainer.loaded_checkpoint["checkpoint_epoch"] == 2  # asked for: fine

    final.unlink()
    (run / "linear" / "checkpoint").unlink()  # not even the pointer: still the final epoch, not epoch 2
    with pytest.raises(UserError) as err:
        load_run(run)
    _one_line(err, final, "is missing")


def test_unfinished_run_is_evaluated_on_its_latest_checkpoint_only(data_root, tmp_path):
    from ampt.evaluation.run_loader import load_run

    trainer = build_trainer(make_cfg(data_root, tmp_path / "run"))
    trainer.stop_at_epoch = 2
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    latest = tmp_path / "run" / "linear" / "model.pth.tar-2"
    assert load_run(tmp_path / "run").epoch == 2
    _truncate(latest)
    with pytest.raises(UserError) as err:
        load_run(tmp_path / "run")
    _one_line(err, latest, "whole epochs there: 1")
    resumed = build_trainer(make_cfg(data_root, tmp_path / "run"))
    resumed.train()  # resuming training still falls back on the newest whole epoch
    assert resumed.start_epoch == 1


# ----------------------------------------------------------------- broken plug-in files

BROKEN_FILES = {
    "trainers/syntax_probe.py": """
        from ampt.api import TRAINER_REGISTRY, TrainerX

        @TRAINER_REGISTRY.register()
        class SyntaxProbe(TrainerX):
            def build_model(self:
                pass
    """,
    "trainers/import_probe.py": """
        import ampt_no_such_module_xyz
        from ampt.api import TRAINER_REGISTRY, TrainerX

        @TRAINER_REGISTRY.register()
        class ImportProbe(TrainerX):
            pass
    """,
    "trainers/collision.py": """
        from ampt.api import TRAINER_REGISTRY, TrainerX

        @TRAINER_REGISTRY.register()
        class CoOp(TrainerX):
            pass
    """,
    "datasets/shades_probe.py": """
        from ampt.api import DATASET_REGISTRY, DatasetBase
        from ampt_no_such_module_xyz import helper

        @DATASET_REGISTRY.register()
        class ShadesProbe(DatasetBase):
            pass
    """,
}


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    """A plug-in folder of broken files on AMPT_PLUGIN_PATH; the registries and modules are restored after."""
    import ampt.plugins as plugins

    folder = tmp_path / "broken_plugin"
    for name, text in BROKEN_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.setenv(plugins.PLUGIN_PATH_ENV, str(folder))
    saved = {reg: dict(reg._obj_map) for reg in (TRAINER_REGISTRY, DATASET_REGISTRY)}
    modules = set(sys.modules)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("ampt.plugins").addHandler(handler)
    yield folder.resolve(), messages
    logging.getLogger("ampt.plugins").removeHandler(handler)
    for reg, entries in saved.items():
        reg._obj_map.clear()
        reg._obj_map.update(entries)
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    getattr(plugins, "_broken", {}).clear()


def test_broken_plugin_files_warn_once_each_and_fail_only_when_asked_for(broken_plugin, data_root, tmp_path,
                                                                         monkeypatch, capsys):
    import train
    from ampt.plugins import load_plugins

    folder, messages = broken_plugin
    load_plugins()  # before: a SyntaxError traceback, whatever the command
    assert len(messages) == len(BROKEN_FILES) and all("\n" not in m for m in messages)
    for name, line in [("trainers/syntax_probe.py", "SyntaxError"), ("trainers/import_probe.py", "ampt_no_such"),
                       ("trainers/collision.py", "already registered"), ("datasets/shades_probe.py", "ampt_no_such")]:
        assert any(str(folder / name) in m and line in m for m in messages), messages
    assert TRAINER_REGISTRY.get("CoOp").__module__ != "ampt.plugins"  # the built-in keeps its name

    assert train.main(_train_argv(data_root, tmp_path / "other")) == 0  # a built-in trainer still trains

    for trainer, file in [("SyntaxProbe", "syntax_probe.py"), ("ImportProbe", "import_probe.py")]:
        monkeypatch.setattr(sys, "argv", ["train.py", "--trainer", trainer, "--output-dir", str(tmp_path / trainer)])
        assert train.cli() == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert f'trainer "{trainer}" comes from the plug-in file {folder / "trainers" / file}' in err
    with pytest.raises(UserError, match=r'dataset "ShadesProbe" comes from the plug-in file .*shades_probe.py'):
        DATASET_REGISTRY.get("ShadesProbe")(None)
