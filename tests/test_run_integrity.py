"""Run-folder integrity under faults, on the built-in engine's linear toy trainer (test_engine).

Covers: an empty or dangling ``checkpoint`` pointer; the run lock (a second
trainer refused while a live process holds the folder, no stale lock after
SIGKILL, held for the whole training); --force then interrupt then resume;
a changed config on resume; train.py --eval-only provenance; file modes
under umask 002; concurrent results.json writers in separate processes;
checkpoint files that are empty, truncated, a JPEG, text, of another
shape, or unwritable; a missing latest checkpoint.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ampt.api import build_trainer
from ampt.engine.checkpoint import CheckpointMissingError, latest_checkpoint, load_checkpoint, save_checkpoint
from ampt.engine.run_config import ConfigChangedError
from ampt.results import RunResults
from ampt.utils.locks import acquire_run_lock, release_run_lock
from ampt.utils.logger import reset_logger
from ampt.utils.torchfile import CheckpointFileError
from engine_toys import _train_argv, make_cfg, weights  # the linear toy trainer (data_root: conftest)

REPO = Path(__file__).resolve().parent.parent


def _interrupted_run(data_root, out: Path, stop_at: int = 2, **over):
    trainer = build_trainer(make_cfg(data_root, out, **over))
    trainer.stop_at_epoch = stop_at
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    return trainer


def _warnings_of(name: str):
    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(name).addHandler(handler)
    return messages, lambda: logging.getLogger(name).removeHandler(handler)


@pytest.fixture
def toy_train(monkeypatch):
    import train
    from ampt.engine.select import use_engine

    monkeypatch.setattr(train, "load_plugins", lambda engine: use_engine(engine))
    yield train
    reset_logger()


# ----------------------------------------------------------------- 1. the checkpoint pointer
@pytest.mark.parametrize("pointer", ["", "model.pth.tar-7\n"])
def test_empty_or_dangling_pointer_uses_the_newest_complete_checkpoint(tmp_path, data_root, pointer):
    _interrupted_run(data_root, tmp_path)
    model_dir = tmp_path / "linear"
    (model_dir / "checkpoint").write_text(pointer)  # what a kill during the old in-place write left
    messages, detach = _warnings_of("ampt.engine.checkpoint")
    try:
        assert latest_checkpoint(model_dir) == model_dir / "model.pth.tar-2"
        resumed = build_trainer(make_cfg(data_root, tmp_path))
        resumed.train()
    finally:
        detach()
    assert any("newest complete checkpoint" in m for m in messages)
    assert resumed.start_epoch == 2 and RunResults(tmp_path).finished


def test_pointer_write_is_atomic(tmp_path, monkeypatch):
    state = {"state_dict": {"w": torch.zeros(2)}, "epoch": 1, "optimizer": None, "scheduler": None}
    save_checkpoint(state, tmp_path)

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**state, "epoch": 2}, tmp_path)
    assert (tmp_path / "checkpoint").read_text() == "model.pth.tar-1\n"
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------- 2. the run lock
# The lock module alone (stdlib only): a subprocess starts in a fraction of a second.
LOCKS = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("locks", "ampt/utils/locks.py")
    locks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(locks)
""")
HOLDER = LOCKS + textwrap.dedent("""
    locks.acquire_run_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def _start_holder(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_trainer_is_refused_while_a_live_process_holds_the_run(tmp_path, data_root, toy_train,
                                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    holder = _start_holder(out)
    try:
        monkeypatch.setattr(sys, "argv", ["train.py", *_train_argv(data_root, out)])
        assert toy_train.cli() == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {out} is being trained by process {holder.pid} on host ")
        assert "\n" not in err and "Traceback" not in err
        assert not (out / "config.yaml").exists() and not (out / "log.txt").exists()  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert toy_train.main(_train_argv(data_root, out)) == 0  # the dead holder left no stale lock
    assert RunResults(out).finished


def test_the_lock_is_held_for_the_whole_training(tmp_path, data_root):
    probe = LOCKS + textwrap.dedent("""
        try:
            locks.acquire_run_lock(sys.argv[1])
        except locks.RunLockedError as err:
            print(err)
            sys.exit(3)
    """)
    seen = []

    class Probing(type(build_trainer(make_cfg(data_root, tmp_path / "x")))):
        def before_epoch(self):
            done = subprocess.run([sys.executable, "-c", probe, str(self.output_dir)], cwd=REPO,
                                  capture_output=True, text=True)
            seen.append((done.returncode, done.stdout))
            super().before_epoch()

    trainer = build_trainer(make_cfg(data_root, tmp_path / "run", **{"OPTIM.MAX_EPOCH": 1}))
    trainer.__class__ = Probing
    trainer.train()
    [(code, message)] = seen
    assert code == 3 and f"process {os.getpid()}" in message
    acquire_run_lock(tmp_path / "run")  # released after training: free again
    release_run_lock(tmp_path / "run")


def test_the_run_lock_is_reentrant_in_one_process_only(tmp_path):
    acquire_run_lock(tmp_path)
    acquire_run_lock(tmp_path)  # train.py holds it, then trainer.train() takes it again
    release_run_lock(tmp_path)
    release_run_lock(tmp_path)
    acquire_run_lock(tmp_path)
    release_run_lock(tmp_path)
    code = LOCKS + "locks.acquire_run_lock(sys.argv[1])"
    acquire_run_lock(tmp_path)
    try:  # another process is refused while this one holds it
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    finally:
        release_run_lock(tmp_path)
    assert done.returncode == 1 and "RunLockedError" in done.stderr and "is being trained by" in done.stderr


# ----------------------------------------------------------------- 3. --force, interrupted, resumed
def test_forced_run_interrupted_then_resumed_never_uses_the_old_weights(tmp_path, data_root):
    build_trainer(make_cfg(data_root, tmp_path / "run")).train()  # a finished 3-epoch run
    old = load_checkpoint(tmp_path / "run" / "linear" / "model.pth.tar-3")["state_dict"]
    forced = build_trainer(make_cfg(data_root, tmp_path / "run"))
    forced.fresh_start = True
    forced.stop_at_epoch = 0  # killed before its first checkpoint
    with pytest.raises(KeyboardInterrupt):
        forced.train()
    [moved] = (tmp_path / "run").glob("linear.bak-*")
    [backup] = (tmp_path / "run").glob("results.json.bak-*")
    assert moved.name.split(".bak-")[1] == backup.name.split(".bak-")[1]  # one stamp for the old run
    assert torch.equal(load_checkpoint(moved / "model.pth.tar-3")["state_dict"]["1.weight"], old["1.weight"])

    resumed = build_trainer(make_cfg(data_root, tmp_path / "run"))
    resumed.train()  # no --force
    assert resumed.start_epoch == 0
    fresh = build_trainer(make_cfg(data_root, tmp_path / "fresh"))
    fresh.train()
    for key, value in weights(fresh).items():
        assert torch.allclose(weights(resumed)[key], value, atol=1e-6)


# ----------------------------------------------------------------- 4. changed config on resume
def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path, data_root):
    _interrupted_run(data_root, tmp_path, stop_at=1)
    changed = make_cfg(data_root, tmp_path, **{"OPTIM.LR": 0.01, "TRAIN.PRINT_FREQ": 1, "DATALOADER.TEST.BATCH_SIZE": 2})
    with pytest.raises(ConfigChangedError) as err:
        build_trainer(changed).train()
    assert "OPTIM.LR: 0.05 -> 0.01" in str(err.value) and "--force" in str(err.value)
    assert "PRINT_FREQ" not in str(err.value) and "TEST.BATCH_SIZE" not in str(err.value)  # not training settings
    assert "LR: 0.05" in (tmp_path / "config.yaml").read_text()  # the stored config is left as it was
    forced = build_trainer(changed)
    forced.fresh_start = True
    forced.train()
    assert forced.start_epoch == 0 and "LR: 0.01" in (tmp_path / "config.yaml").read_text()


# ----------------------------------------------------------------- 5. eval-only provenance
def test_eval_only_records_name_their_checkpoint_and_keep_a_finished_runs_records(tmp_path, data_root, toy_train):
    out = tmp_path / "run"
    assert toy_train.main(_train_argv(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    [final] = RunResults(out).records
    assert final["checkpoint_epoch"] == 2 and final["weights"] == RunResults(out).run["final_weights"]

    epoch1 = ["--eval-only", "--model-dir", str(out), "--load-epoch", "1"]
    assert toy_train.main(_train_argv(data_root, out, *epoch1)) == 0
    assert RunResults(out).records == [final]  # the finished run's record is not replaced ...
    assert toy_train.main(_train_argv(data_root, out, *epoch1, "--force")) == 0
    [replaced] = RunResults(out).records  # ... unless forced, and then it says what it measured
    assert replaced["checkpoint_epoch"] == 1 and replaced["model_dir"] == str(out.resolve())
    assert replaced["weights"] != final["weights"]

    other = tmp_path / "eval"
    assert toy_train.main(_train_argv(data_root, other, *epoch1)) == 0
    [record] = RunResults(other).records
    assert record["checkpoint_epoch"] == 1 and record["model_dir"] == str(out.resolve())


# ----------------------------------------------------------------- 9. file modes
def test_files_honour_the_umask(tmp_path, data_root):
    previous = os.umask(0o002)
    try:
        build_trainer(make_cfg(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 1})).train()
        from ampt.utils.io import write_json

        write_json({"state": {}}, tmp_path / "eval_progress" / "pgd-x.json")
    finally:
        os.umask(previous)
    for name in ("results.json", "config.yaml", "linear/model.pth.tar-1", "linear/checkpoint",
                 "eval_progress/pgd-x.json", ".run.lock", ".results.json.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name


# ----------------------------------------------------------------- 2b. concurrent results.json writers
def _write_records(run_dir: str, writer: int, count: int) -> None:
    results = RunResults(run_dir)
    for i in range(count):
        results.add({"dataset": "D", "split": "test", "attack": f"w{writer}", "eps": 0, "steps": i,
                     "n_samples": 1, "accuracy": float(i)})
        if i % 10 == 0:
            results.set_run(**{f"writer{writer}": i})


def test_concurrent_writers_in_processes_lose_nothing(tmp_path):
    writers, count = 4, 40
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_write_records, args=(str(tmp_path), w, count)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["records"]) == writers * count
    assert {(r["attack"], r["steps"]) for r in data["records"]} == {(f"w{w}", i) for w in range(writers)
                                                                    for i in range(count)}
    assert all(data["run"][f"writer{w}"] == 30 for w in range(writers))


# ----------------------------------------------------------------- 15. files that are not checkpoints
def _corrupt_files(folder: Path):
    torch.save({"state_dict": {"w": torch.randn(4000)}, "epoch": 1}, folder / "good.pth")
    whole = (folder / "good.pth").read_bytes()
    (folder / "empty.pth").write_bytes(b"")
    (folder / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    (folder / "photo.pth").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    (folder / "notes.pth").write_text("export DATA=/data\n")
    return {"empty.pth": "is empty (0 bytes)", "truncated.pth": "is truncated",
            "photo.pth": "is not a PyTorch file: it is a JPEG image",
            "notes.pth": "is not a PyTorch file: it is a text file"}


def test_broken_checkpoints_say_what_the_file_is(tmp_path):
    for name, cause in _corrupt_files(tmp_path).items():
        with pytest.raises(CheckpointFileError) as err:
            load_checkpoint(tmp_path / name)
        message = str(err.value)
        assert str(tmp_path / name) in message and cause in message, message
        assert "weights_only" not in message and "\n" not in message


def test_text_file_as_backbone_is_named(tmp_path):
    from ampt.models.clip_loader import load_clip

    (tmp_path / "ViT-B-32.pt").write_text("hello, this is not a model\n")
    with pytest.raises(CheckpointFileError, match="ViT-B-32.pt\" is not a PyTorch file: it is a text file"):
        load_clip(str(tmp_path / "ViT-B-32.pt"))


def test_checkpoint_of_another_shape_is_one_line(tmp_path, data_root, toy_train, capsys, monkeypatch):
    out = tmp_path / "run"
    assert toy_train.main(_train_argv(data_root, out)) == 0
    state = load_checkpoint(out / "linear" / "model.pth.tar-2")
    state["state_dict"]["1.weight"] = torch.zeros(3, 192)
    torch.save(state, out / "linear" / "model.pth.tar-2")
    argv = _train_argv(data_root, tmp_path / "eval", "--eval-only", "--model-dir", str(out), "--load-epoch", "2")
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    assert toy_train.cli() == 2
    err = capsys.readouterr().err.strip()
    assert "model.pth.tar-2\" does not fit" in err and "size mismatch for 1.weight" in err and "\n" not in err


def _save_past_a_size_limit(folder: str) -> None:
    import resource

    save_checkpoint({"state_dict": {"w": torch.zeros(10)}, "epoch": 1}, folder)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "epoch": 2}, folder)
    except OSError as err:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        Path(folder, "message.txt").write_text(str(err))


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(tmp_path):
    child = multiprocessing.get_context("fork").Process(target=_save_past_a_size_limit, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    message = (tmp_path / "message.txt").read_text()
    assert message.startswith(f'Could not write "{tmp_path / "model.pth.tar-2"}"') and "free" in message
    assert "\n" not in message
    assert (tmp_path / "checkpoint").read_text() == "model.pth.tar-1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "message.txt", "model.pth.tar-1"]


# ----------------------------------------------------------------- 16. a missing latest checkpoint
def test_missing_latest_checkpoint_is_never_a_silent_restart(tmp_path, data_root):
    _interrupted_run(data_root, tmp_path)
    model_dir = tmp_path / "linear"
    (model_dir / "model.pth.tar-2").unlink()
    messages, detach = _warnings_of("ampt.engine.checkpoint")
    try:
        resumed = build_trainer(make_cfg(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 3}))
        resumed.stop_at_epoch = 2
        with pytest.raises(KeyboardInterrupt):
            resumed.train()
    finally:
        detach()
    assert resumed.start_epoch == 1 and any("model.pth.tar-2, which is missing" in m for m in messages)

    for path in model_dir.glob("model.pth.tar-*"):
        path.unlink()
    (model_dir / "model.pth.tar-2").write_bytes(b"")  # only an empty file left
    with pytest.raises(CheckpointMissingError, match="--force"):
        build_trainer(make_cfg(data_root, tmp_path)).train()
    forced = build_trainer(make_cfg(data_root, tmp_path))
    forced.fresh_start = True
    forced.train()
    assert forced.start_epoch == 0 and RunResults(tmp_path).finished
