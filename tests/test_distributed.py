"""torchrun training and sharded evaluation (gloo, 2 CPU processes), and the precision policy.

Real ``torchrun`` (``python -m torch.distributed.run``) in a subprocess on the
embedded Digits data and a briefly fitted tiny CLIP:

- APT trained adversarially on 1 and on 2 processes with the same global
  batch gives the same prompt (float tolerance): the training attack's
  random start is drawn per image from (seed, epoch, dataset index), the
  sampler deals one permutation, gradients are averaged. One results.json,
  no duplicate records, the world size in its run block;
- sharded clean and PGD evaluation gives exactly the one-process accuracy,
  with ``--n-samples``, after a SIGKILL of every process mid-evaluation and
  a resume from the per-shard progress files (one torchrun run checks both);
- autocast (bf16 on CPU) training keeps fp32 parameters and optimizer state;
  a bf16 evaluation is its own record with ``precision: bf16``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from ampt.attacks.per_sample import uniform_start
from ampt.utils import distributed
from ampt.results import RunResults, record_key
from toys import APT_DIGITS, DIGITS, REPO


@pytest.fixture(scope="module")
def env(colour_digits_env):
    """(data root, tiny CLIP fitted briefly to caption the colours): 4 classes, 40 test images (conftest)."""
    return colour_digits_env


def _train_args(env, out: Path, *extra: str) -> List[str]:
    root, backbone = env
    return ["--root", str(root), "--seed", "1", "--trainer", "APT", "--config-file", str(APT_DIGITS),
            "--dataset-config-file", str(DIGITS), "--output-dir", str(out), "--backbone", str(backbone),
            "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2", "OPTIM.NAME", "adam", "OPTIM.LR", "0.01", "OPTIM.WARMUP_EPOCH", "0", "INPUT.TRANSFORMS", "[]",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8", "ADV.TEST.STEPS", "2",
            "TRAIN.PRINT_FREQ", "100", *extra]


def _build(env, out: Path, *extra: str):
    """The trainer train.py would build in one process (seeded as train.py seeds it)."""
    import train
    from ampt.api import TRAINER_REGISTRY, build_trainer
    from ampt.config import setup_cfg
    from ampt.plugins import load_plugins
    from ampt.utils import set_random_seed

    load_plugins("builtin")
    cfg = setup_cfg(train.build_parser().parse_args(_train_args(env, out, *extra)), TRAINER_REGISTRY.get("APT"))
    set_random_seed(1)
    return build_trainer(cfg)


def _torchrun(nproc: int, script: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(REPO / script), *map(str, args)]


def _run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "AMPT_NO_PROGRESS": "1"}


def _check_run(cmd: List[str]) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=_run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _check_runs(*cmds: List[str], logs: Path) -> None:
    """Run the commands at the same time (each torchrun picks its own free port); each must succeed."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, cmd in enumerate(cmds):
        with open(logs / f"{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=_run_env(), stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, code in enumerate(codes):
        assert code == 0, (logs / f"{i}.log").read_text()[-6000:]


def _ctx(run: Path) -> torch.Tensor:
    return torch.load(run / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]["ctx"]


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """The same APT run trained by torchrun on 1 and on 2 processes (both launched at once)."""
    base = tmp_path_factory.mktemp("runs")
    _check_runs(*(_torchrun(n, "train.py", *_train_args(env, base / f"np{n}")) for n in (1, 2)), logs=base / "logs")
    return base / "np1", base / "np2"


def test_two_processes_train_the_prompt_of_one(runs, env, tmp_path):
    one, two = runs
    diff = (_ctx(one) - _ctx(two)).abs().max()
    assert diff < 1e-4, diff  # Adam normalizes tiny gradients: float noise of ~1e-7 grows to ~1e-5
    start = _build(env, tmp_path / "init").model.prompt_learner.ctx.detach()
    assert (_ctx(one) - start).abs().max() > 1e-2  # the prompt moved: the equality is not the init's
    results = RunResults(two)
    assert results.finished and results.run["world_size"] == 2 and results.run["global_batch"] == 4
    assert results.run["batch_per_device"] == 2 and RunResults(one).run["world_size"] == 1
    keys = [record_key(r) for r in results.records]
    assert len(keys) == len(set(keys)) == 2
    assert [p.name for p in two.glob("results.json*")] == ["results.json"]
    by_attack = {r["attack"]: r for r in results.records}
    assert all(r["precision"] == "fp32" and r["n_samples"] == 40 for r in results.records)
    reference = {r["attack"]: r["accuracy"] for r in RunResults(one).records}
    assert 50 < by_attack["clean"]["accuracy"]
    for attack, accuracy in reference.items():  # sharded final tests of (nearly) the same prompt
        assert abs(by_attack[attack]["accuracy"] - accuracy) <= 0.5
    log = (two / "log.txt").read_text()
    assert log.count("Finish training") == 1 and "World size 2: global batch 4 (2 per process)" in log


def _evaluate_in_process(run: Path, *args: str) -> dict:
    import evaluate

    assert evaluate.main([str(run), *args]) == 0
    return {r["attack"]: r for r in RunResults(run).records if r.get("seed") == 7}


def _copy_run(run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(run, target)
    return target


def _children(pid: int) -> List[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _shard_batches(progress_dir: Path) -> List[int]:
    batches = []
    for path in progress_dir.glob("*.json"):
        try:
            batches.append(json.loads(path.read_text())["state"]["batches"])
        except (OSError, ValueError):
            pass
    return batches


def test_sharded_evaluation_equals_one_process_and_resumes_after_sigkill(runs, tmp_path):
    """torchrun evaluate.py on 2 processes, killed mid-PGD and resumed, equals one process (PGD and clean).

    34 of the 40 test images in batches of 4: 9 batches, 5 and 4 per shard, the last one of 2 images.
    """
    args = ["--attack", "pgd", "clean", "--eps", "16", "--steps", "30", "--n-samples", "34", "--batch-size", "4",
            "--seed", "7"]
    run = _copy_run(runs[0], tmp_path / "killed")
    progress_dir = run / "eval_progress"
    agent = subprocess.Popen(_torchrun(2, "evaluate.py", run, *args), cwd=REPO, env=_run_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and agent.poll() is None:
            batches = _shard_batches(progress_dir)
            if len(batches) == 2 and min(batches) >= 1:
                break
            time.sleep(0.02)
        assert agent.poll() is None, "the evaluation ended before it could be killed: give it more steps"
        workers = _children(agent.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        os.kill(agent.pid, signal.SIGKILL)
    finally:
        agent.wait(timeout=60)
    time.sleep(0.5)
    assert sorted(p.name.split("-")[0] for p in progress_dir.glob("*.json")) == ["pgd", "pgd"]  # killed in the PGD
    left = _shard_batches(progress_dir)
    assert len(left) == 2 and 1 <= min(left) and max(left) < 5  # 9 batches: 5 and 4 per shard
    assert not any(r.get("seed") == 7 for r in RunResults(run).records)

    _check_run(_torchrun(2, "evaluate.py", run, *args))
    assert "Resuming robust accuracy (PGD-30" in (run / "evaluate_log.txt").read_text()
    assert not list(progress_dir.glob("*.json"))
    sharded = {r["attack"]: r for r in RunResults(run).records if r.get("seed") == 7}
    assert set(sharded) == {"clean", "pgd"}
    single = _evaluate_in_process(_copy_run(runs[0], tmp_path / "single"), *args)
    for attack, record in sharded.items():
        assert record["accuracy"] == single[attack]["accuracy"] and record["n_samples"] == 34
        assert record["world_size"] == 2 and record["precision"] == "fp32"
    assert 0 < single["pgd"]["accuracy"] < single["clean"]["accuracy"]  # the attack does something
    assert 0 < sharded["pgd"]["accuracy"] < 100
    keys = [record_key(r) for r in RunResults(run).records]
    assert len(keys) == len(set(keys))


def test_reduced_precision_evaluation_is_recorded_apart(runs, tmp_path):
    run = _copy_run(runs[0], tmp_path / "bf16")
    args = ["--attack", "clean", "pgd", "--steps", "2", "--n-samples", "8", "--seed", "7"]
    fp32 = _evaluate_in_process(run, *args)
    bf16 = _evaluate_in_process(run, *args, "--precision", "bf16")
    assert {r["precision"] for r in bf16.values()} == {"bf16"}
    records = [r for r in RunResults(run).records if r.get("seed") == 7]
    assert sorted((r["attack"], r["precision"]) for r in records) == [
        ("clean", "bf16"), ("clean", "fp32"), ("pgd", "bf16"), ("pgd", "fp32")]
    assert fp32["pgd"]["precision"] == "fp32"
    assert "overstate robustness" in (run / "evaluate_log.txt").read_text()
    from ampt.report.aggregate import column_id

    assert column_id(bf16["pgd"], "learned") == "pgd-2@4 [bf16]" and column_id(fp32["pgd"], "learned") == "pgd-2@4"


def test_autocast_training_keeps_fp32_master_parameters(env, tmp_path):
    trainer = _build(env, tmp_path / "bf16", "TRAINER.APT.PREC", "bf16", "OPTIM.MAX_EPOCH", "1",
                     "TEST.NO_TEST", "True")
    assert trainer.precision == "bf16" and trainer.scaler is None
    start = trainer.model.prompt_learner.ctx.detach().clone()
    seen = []
    hook = trainer.model.image_encoder.transformer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.train()
    hook.remove()
    assert torch.bfloat16 in seen  # the frozen tower ran under autocast
    ctx = trainer.model.prompt_learner.ctx
    assert ctx.dtype == torch.float32 and not torch.equal(ctx.detach(), start)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = trainer.optim.state[ctx]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_half_parameters_are_refused():
    from ampt.precision import check_fp32_parameters

    module = torch.nn.Linear(2, 2).half()
    with pytest.raises(RuntimeError, match="fp32"):
        check_fp32_parameters(module)
    check_fp32_parameters(module.float())


def test_shards_are_whole_batches_that_cover_the_set(monkeypatch):
    indices = list(range(3, 33))  # 30 indices, batches of 4: 8 batches, the last of 2
    shards = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        shards.append(distributed.shard_batch_indices(indices, 4))
    batches = lambda xs: [xs[i:i + 4] for i in range(0, len(xs), 4)]  # noqa: E731
    assert sorted(b for s in shards for b in batches(s)) == batches(indices)
    assert shards[0][:4] == indices[:4] and shards[1][:4] == indices[4:8]


def test_batch_split_and_per_device(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.per_device_batch(8, per_device=False) == 4 and distributed.global_batch(8, False) == 8
    assert distributed.per_device_batch(8, per_device=True) == 8 and distributed.global_batch(8, True) == 16
    with pytest.raises(distributed.DistributedSetupError, match="not divisible by the 2 processes"):
        distributed.per_device_batch(5, per_device=False)


def test_per_image_start_does_not_depend_on_the_batch():
    images = torch.rand(5, 3, 8, 8)
    seeds = [distributed.sample_seed(1, 0, i) for i in range(5)]
    whole = uniform_start(images, 4 / 255, seeds)
    assert torch.equal(uniform_start(images[2:4], 4 / 255, seeds[2:4]), whole[2:4])
    assert not torch.equal(whole[0] - images[0], whole[1] - images[1])
    assert (whole - images).abs().max() <= 4 / 255 + 1e-7
