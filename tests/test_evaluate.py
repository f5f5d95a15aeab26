"""evaluate.py on finished tiny CoOp and APT runs (tiny CLIP, tiny generated data).

Covers: the records of docs/results_format.md for clean, pgd, cw, tpgd and aa; a second
call skips them, --force recomputes; --n-samples records the subset size
and the subset is fixed by the seed; an interrupted evaluation resumes at
its first unfinished batch with the same result; eps as a fraction is
refused; a unified prompt transfers to another dataset, a class-specific
one is refused; a hand-written template evaluates the same backbone;
alpha and the attack seed are in the record key; a record of an
intermediate checkpoint is recomputed once the run finished; a wrong
RUN_DIR creates nothing.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import ampt.evaluation.evaluate_cli as evaluation
import ampt.evaluation.robust_accuracy as robust_accuracy
from ampt.errors import UserError
from ampt.results import RunResults
from toys import APT_DIGITS, COOP_DIGITS, REPO, LazyRuns  # toy_env: conftest

ZS_DIGITS = REPO / "configs" / "trainers" / "ZeroshotCLIP" / "digits.yaml"
RESULTS_MD_FIELDS = {"dataset", "split", "attack", "eps", "steps", "n_samples", "accuracy"}


def _train(toy_env, out: Path, trainer: str, config: Path) -> Path:
    import train

    root, backbone = toy_env
    argv = ["--root", str(root), "--seed", "1", "--trainer", trainer, "--config-file", str(config),
            "--output-dir", str(out), *(["--eval-only"] if trainer == "ZeroshotCLIP" else []), "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone),
            "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE", "4"]
    if trainer == "APT":
        argv += ["ADV.TEST.STEPS", "2"]
    assert train.main(argv) == 0
    assert RunResults(out).finished
    return out


@pytest.fixture(scope="module")
def runs(toy_env, tmp_path_factory):
    """Finished CoOp, APT and zero-shot runs, each trained when a test first asks for it (tests copy them)."""
    base = tmp_path_factory.mktemp("eval_runs")
    runs = {"CoOp": ("coop", COOP_DIGITS), "APT": ("apt", APT_DIGITS), "ZeroshotCLIP": ("zs", ZS_DIGITS)}
    return LazyRuns(runs, lambda name: _train(toy_env, base / runs[name][0], name, runs[name][1]))


def evaluate(*argv: str) -> int:
    import evaluate as cli

    return cli.main([str(a) for a in argv])


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


@pytest.mark.parametrize("method", ["CoOp", "APT"])
def test_writes_results_md_records_then_skips_then_force(runs, tmp_path, monkeypatch, method, capsys):
    run = _copy(runs[method], tmp_path)
    attacks = ["clean", "pgd", "cw", "tpgd", "aa"]
    eps = [] if method == "APT" else ["--eps", "4"]  # APT defaults to its training eps
    assert evaluate(run, "--attack", *attacks[:-1], *eps, "--steps", "3") == 0
    # AutoAttack's Square runs 5000 queries on every image still robust: a large eps leaves none
    assert evaluate(run, "--attack", "aa", "--eps", "128", "--n-samples", "4") == 0
    records = [r for r in RunResults(run).records if r.get("steps") != 2]  # drop the training PGD-2 record
    by_attack = {r["attack"]: r for r in records}
    assert set(by_attack) == set(attacks) and len(records) == len(attacks)
    for r in records:
        assert RESULTS_MD_FIELDS <= set(r) and r["dataset"] == "AptToy" and r["split"] == "test"
        assert r["n_samples"] == (4 if r["attack"] == "aa" else 12) and r["prompt"] == "learned"
        assert r["accuracy"] <= by_attack["clean"]["accuracy"]
        assert r["attack"] == "clean" or ("seconds" in r and r["attack_prompt"] == "learned")
    assert by_attack["clean"]["accuracy"] > 50
    assert (by_attack["clean"]["eps"], by_attack["clean"]["steps"]) == (0, 0)
    assert (by_attack["pgd"]["eps"], by_attack["pgd"]["steps"], by_attack["pgd"]["alpha"]) == (4, 3, 1)
    assert by_attack["pgd"]["label"] == "robust accuracy (PGD-3, eps 4/255)"
    aa = by_attack["aa"]
    assert aa["library"].startswith("pyautoattack") and (aa["eps"], aa["steps"]) == (128, 0)
    assert "accuracy (%)" in capsys.readouterr().out

    def fail(*args, **kwargs):
        raise AssertionError("an existing record was recomputed")

    before = RunResults(run).records
    monkeypatch.setattr(evaluation, "accuracies_under_one_attack", fail)
    assert evaluate(run, "--attack", *attacks[:-1], *eps, "--steps", "3") == 0
    assert evaluate(run, "--attack", "aa", "--eps", "128", "--n-samples", "4") == 0
    assert RunResults(run).records == before
    monkeypatch.undo()
    calls = []
    original = evaluation.accuracies_under_one_attack
    monkeypatch.setattr(evaluation, "accuracies_under_one_attack", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert evaluate(run, "--attack", "clean", "pgd", *eps, "--steps", "3", "--force") == 0
    assert len(calls) == 2 and len(RunResults(run).records) == len(before)


def test_coop_needs_eps_and_fraction_refused(runs, tmp_path, capsys, monkeypatch):
    import evaluate as cli

    run = _copy(runs["CoOp"], tmp_path)
    with pytest.raises(ValueError, match="--eps"):
        evaluate(run, "--attack", "pgd")
    with pytest.raises(ValueError, match="fraction"):
        evaluate(run, "--attack", "pgd", "--eps", "0.0157")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", str(run), "--eps", "0.0157"])
    assert cli.cli() == 2
    assert "1/255" in capsys.readouterr().err


def test_n_samples_subset_and_resume(runs, tmp_path, monkeypatch):
    run = _copy(runs["APT"], tmp_path)
    assert evaluate(run, "--attack", "pgd", "--steps", "2", "--n-samples", "8", "--seed", "3") == 0
    subset = next(r for r in RunResults(run).records if r["n_samples"] == 8)
    assert subset["steps"] == 2 and subset["seed"] == 3
    assert evaluation.ordered_indices(12, 8, 3) == evaluation.ordered_indices(12, 8, 3) != evaluation.ordered_indices(12, 8, 4)
    # interrupt after the first batch, then resume: same number, first batch not attacked again
    real_model = evaluation.prompt_model
    batches = []

    def counting_model(trainer, prompt):
        model = real_model(trainer, prompt)
        forward = model.forward
        model.forward = lambda x: batches.append(x.shape[0]) or forward(x)
        return model

    class StopAfterOneBatch:
        def __init__(self, iterable, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            for index, batch in enumerate(self.iterable):
                if index == 1:
                    raise KeyboardInterrupt
                yield batch

        def set_postfix_str(self, *args, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(evaluation, "prompt_model", counting_model)
    monkeypatch.setattr(robust_accuracy, "progress_bar", StopAfterOneBatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run, "--attack", "pgd", "--steps", "2", "--n-samples", "8", "--seed", "3", "--force")
    assert len(batches) == 4  # batch 1: clean forward, 2 attack steps, adversarial forward
    progress = list((run / evaluation.PROGRESS_DIR).glob("*.json"))
    assert len(progress) == 1
    monkeypatch.undo()
    monkeypatch.setattr(evaluation, "prompt_model", counting_model)
    batches.clear()
    evaluate(run, "--attack", "pgd", "--steps", "2", "--n-samples", "8", "--seed", "3", "--force")
    assert batches == [4, 4, 4, 4]  # only batch 2 (of 2 batches of 4) was evaluated
    resumed = next(r for r in RunResults(run).records if r["n_samples"] == 8)
    assert resumed["accuracy"] == subset["accuracy"]
    assert not list((run / evaluation.PROGRESS_DIR).glob("*.json"))


def test_cross_dataset_and_template_prompt(runs, tmp_path):
    run = _copy(runs["APT"], tmp_path)
    assert evaluate(run, "--attack", "clean", "pgd", "--steps", "2", "--dataset", "AptToyShapes") == 0
    shifted = [r for r in RunResults(run).records if r["dataset"] == "AptToyShapes"]
    assert {r["attack"] for r in shifted} == {"clean", "pgd"}
    assert all(r["n_samples"] == 9 and r["train_dataset"] == "AptToy" for r in shifted)
    template = "a photo of a {}."
    assert evaluate(run, "--attack", "clean", "--prompt", template) == 0
    assert any(r["prompt"] == template for r in RunResults(run).records)
    with pytest.raises(ValueError, match="template"):
        evaluate(run, "--attack", "clean", "--prompt", "uniform")
    csc = _copy(runs["APT"], tmp_path / "csc")
    config = csc / "config.yaml"
    config.write_text(config.read_text().replace("CSC: false", "CSC: true"))
    with pytest.raises(ValueError, match="class-specific"):
        evaluate(csc, "--attack", "clean", "--dataset", "AptToyShapes")


def test_zero_shot_run_is_evaluated_with_its_template(runs, tmp_path):
    run = _copy(runs["ZeroshotCLIP"], tmp_path)
    (clean,) = RunResults(run).records
    assert evaluate(run, "--attack", "clean", "pgd", "--eps", "4", "--steps", "2") == 0
    records = RunResults(run).records
    assert len(records) == 2 and records[0] == clean  # its own clean record is recognised, not recomputed
    assert records[1]["attack"] == "pgd" and records[1]["prompt"] == clean["prompt"] == "a photo of a {}."


def test_alpha_and_seed_are_in_the_record_key(runs, tmp_path, monkeypatch):
    run = _copy(runs["APT"], tmp_path)
    [trained] = [r for r in RunResults(run).records if r["attack"] == "pgd"]  # the in-training PGD-2, seed 1
    assert trained["seed"] == 1
    common = ["--attack", "pgd", "--steps", "2", "--n-samples", "4"]
    full = ["--attack", "pgd", "--steps", "2", "--alpha", str(trained["alpha"])]
    assert evaluate(run, *full, "--seed", "1") == 0  # the same setting as the training's record: reused
    assert RunResults(run).records.count(trained) == 1 and len(RunResults(run).records) == 2
    assert evaluate(run, *full, "--seed", "0") == 0  # another attack seed is another number
    assert evaluate(run, *common, "--alpha", "1") == 0
    assert evaluate(run, *common, "--alpha", "4") == 0  # not the alpha-1 record
    pgd = [r for r in RunResults(run).records if r["attack"] == "pgd"]
    assert sorted((r["n_samples"], r["alpha"], r["seed"]) for r in pgd) == [
        (4, 1, 0), (4, 4, 0), (12, trained["alpha"], 0), (12, trained["alpha"], 1)]


def test_records_of_an_intermediate_checkpoint_are_recomputed(toy_env, tmp_path, monkeypatch):
    import train
    from ampt.api import TRAINER_REGISTRY

    root, backbone = toy_env
    out = tmp_path / "coop"
    argv = ["--root", str(root), "--seed", "1", "--trainer", "CoOp", "--config-file", str(COOP_DIGITS),
            "--output-dir", str(out), "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone),
            "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "DATALOADER.TEST.BATCH_SIZE", "4"]
    coop = TRAINER_REGISTRY.get("CoOp")

    def stop_at_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(coop, "before_epoch", stop_at_second_epoch, raising=False)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    monkeypatch.undo()
    attack = ["--attack", "pgd", "--eps", "4", "--steps", "1", "--n-samples", "4"]
    assert evaluate(out, *attack) == 0  # on the unfinished run's epoch-1 checkpoint
    [early] = [r for r in RunResults(out).records if r["attack"] == "pgd"]
    assert early["checkpoint_epoch"] == 1

    assert train.main(argv) == 0  # resumed and finished
    assert evaluate(out, *attack) == 0
    [final] = [r for r in RunResults(out).records if r["attack"] == "pgd"]
    assert final["checkpoint_epoch"] == 2 and final["weights"] == RunResults(out).run["final_weights"]
    assert final["weights"] != early["weights"]


def test_a_wrong_run_path_creates_nothing(tmp_path, monkeypatch, capsys):
    import evaluate as cli

    wrong = tmp_path / "no" / "such" / "run"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", str(wrong), "--eps", "4"])
    assert cli.cli() == 2
    assert not (tmp_path / "no").exists()
    assert f"{wrong} does not exist" in capsys.readouterr().err


def test_field_attack_configurations_are_recorded_in_key_and_column(runs, tmp_path):
    run = _copy(runs["APT"], tmp_path)
    assert evaluate(run, "--attack", "pgd", "apgd-t", "aa-custom", "--aa-attacks", "apgd-ce,apgd-dlr",
                    "--steps", "2", "--restarts", "2", "--n-samples", "4", "--eps", "8") == 0
    by_attack = {r["attack"]: r for r in RunResults(run).records if r.get("n_samples") == 4}
    pgd, apgd_t, custom = by_attack["pgd"], by_attack["apgd-t"], by_attack["aa-custom"]
    assert (pgd["steps"], pgd["restarts"], pgd["column"]) == (2, 2, "pgd-2x2@8")
    assert pgd["attack_config"]["restarts"] == 2 and pgd["adaptive"] == "none" and pgd["access"] == "white-box"
    assert (apgd_t["steps"], apgd_t["restarts"], apgd_t["column"]) == (2, 2, "apgd-t-2x2@8")
    assert apgd_t["attack_config"]["settings"]["apgd-t"] == {"n_iter": 2, "n_restarts": 2, "eot_iter": 1,
                                                              "n_target_classes": 3}
    assert (custom["attack_options"], custom["column"], custom["steps"]) == ("apgd-ce,apgd-dlr",
                                                                              "aa-custom(apgd-ce,apgd-dlr)@8", 0)
    assert custom["attack_config"]["version"] == "custom" and "restarts" not in custom
    # the restarts are in the key: the one-restart PGD is a new record, the 2-restart one is skipped
    assert evaluate(run, "--attack", "pgd", "--steps", "2", "--n-samples", "4", "--eps", "8") == 0
    pgds = [r for r in RunResults(run).records if r["attack"] == "pgd" and r.get("n_samples") == 4]
    assert sorted(r.get("restarts", 1) for r in pgds) == [1, 2]


def test_attack_settings_no_listed_attack_takes_are_refused(runs, tmp_path):
    run = _copy(runs["APT"], tmp_path)
    with pytest.raises(ValueError, match="--restarts applies to none of --attack clean aa; attacks that take it: "):
        evaluate(run, "--attack", "clean", "aa", "--restarts", "3")
    with pytest.raises(ValueError, match="--aa-attacks is the attack list of aa-custom"):
        evaluate(run, "--attack", "aa", "--aa-attacks", "apgd-ce")
    with pytest.raises(ValueError, match="unknown attack apgd-q"):
        evaluate(run, "--attack", "aa-custom", "--aa-attacks", "apgd-q")
    with pytest.raises(ValueError, match="--image-ids and --n-samples"):
        evaluate(run, "--attack", "clean", "--image-ids", tmp_path / "x.txt", "--n-samples", "3")


def test_image_ids_evaluate_exactly_the_listed_images(runs, tmp_path):
    from ampt.evaluation.image_lists import list_digest, read_image_ids

    run = _copy(runs["APT"], tmp_path)
    assert evaluate(run, "--attack", "clean", "--n-samples", "5", "--seed", "2") == 0
    written = run / "image_lists" / "AptToy-test-n5-seed2.txt"
    ids = read_image_ids(written)
    subset = next(r for r in RunResults(run).records if r["n_samples"] == 5)
    assert len(ids) == 5 and subset["images_sha256"] == list_digest(ids)
    assert subset["image_list_file"] == "image_lists/AptToy-test-n5-seed2.txt" and "image_list" not in subset
    # the written list, re-used with --image-ids (last two path components only), gives the same images
    short = tmp_path / "ids.txt"
    short.write_text("# five images\n" + "".join("/".join(i.split("/")[-2:]) + "\n" for i in ids))
    assert evaluate(run, "--attack", "clean", "--image-ids", short) == 0
    listed = next(r for r in RunResults(run).records if r.get("image_list"))
    assert listed["n_samples"] == 5 and listed["accuracy"] == subset["accuracy"]
    assert listed["image_list"] == list_digest(read_image_ids(short))[:16]
    short.write_text(ids[0] + "\nclass_9/missing.png\n")
    with pytest.raises(ValueError, match=r"ids.txt: class_9/missing.png is not in the test set \(1 of 2"):
        evaluate(run, "--attack", "clean", "--image-ids", short)


@pytest.mark.parametrize("method", ["CoOp", "APT"])
def test_audit_of_an_honest_run_passes_and_is_written_once(runs, tmp_path, method, capsys):
    from ampt.audit.__main__ import main as audit

    run = _copy(runs[method], tmp_path)
    # The toy's colour classes differ by more than 2 x 64/255 in every pixel: white stays white at 64/255
    # (25% robust there), so its large-eps check needs a larger budget than natural images do.
    argv = [str(run), "--eps", "4", "--n-samples", "12", "--pgd-steps", "20", "--strong-steps", "20", "--restarts",
            "2", "--large-eps", "192", "--queries", "100"]
    assert audit(argv) == 0
    (entry,) = RunResults(run).load()["audit"]
    statuses = {c["name"]: c["status"] for c in entry["checks"]}
    assert statuses == {"determinism": "pass", "gradient_health": "pass", "convergence": "pass", "black_box": "pass",
                        "large_eps": "pass", "transfer": "pass", "declared_parts": "skip"}, entry["checks"]
    assert entry["status"] == "pass" and entry["n_samples"] == 12 and entry["weights"] == RunResults(run).run.get(
        "final_weights", entry["weights"])
    assert entry["transfer_source"].startswith("zero-shot") and entry["settings"]["strong_steps"] == 20
    out = capsys.readouterr().out
    assert "| determinism" in out and "audit: pass (no flags), 12 images" in out
    if method == "CoOp":
        return  # the rest is the same for both
    assert audit(argv) == 0 and len(RunResults(run).load()["audit"]) == 1  # the same audit is not repeated
    assert "audit: pass" not in capsys.readouterr().out
    assert audit(argv + ["--force", "--checks", "determinism"]) == 0  # other settings: added
    assert len(RunResults(run).load()["audit"]) == 2
    assert audit(argv + ["--force", "--checks", "determinism"]) == 0  # the same again, forced: replaced
    assert len(RunResults(run).load()["audit"]) == 2


def test_audit_refuses_unknown_checks_and_missing_eps(runs, tmp_path):
    from ampt.audit.__main__ import main as audit

    run = _copy(runs["CoOp"], tmp_path)
    with pytest.raises(ValueError, match="unknown audit check determinsm; valid: determinism, gradient_health"):
        audit([str(run), "--eps", "4", "--checks", "determinsm"])
    with pytest.raises(ValueError, match="not trained adversarially: give the audit's budget with --eps"):
        audit([str(run), "--checks", "determinism"])


def test_test_time_records_keep_method_settings_and_threat_apart(runs, tmp_path):
    """--test-time: clean and attacked records under both threat models, in the key, column and provenance;
    a second call skips them; a run without learned prompts is refused in one line."""
    run = _copy(runs["APT"], tmp_path)
    before = len(RunResults(run).records)
    argv = [run, "--attack", "clean", "pgd", "--steps", "2", "--n-samples", "3", "--test-time", "tapt", "rtpt",
            "--test-time-options", "views=3", "--threat", "non-adaptive", "adaptive"]
    attacks = []
    original = robust_accuracy.AttackSpec.build
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(robust_accuracy.AttackSpec, "build", lambda self, *a, **k: attacks.append(self.name) or original(self, *a, **k))
        assert evaluate(*argv) == 0
    # one clean pass and one non-adaptive PGD for the run's model and both methods; one adaptive PGD per method
    assert attacks == ["clean", "pgd", "pgd", "pgd"]
    records = RunResults(run).records[before:]
    by_column = {r["column"]: r for r in records}
    assert sorted(by_column) == ["clean", "clean/rtpt", "clean/tapt", "pgd-2@4", "pgd-2@4/rtpt", "pgd-2@4/rtpt-adaptive",
                                 "pgd-2@4/tapt", "pgd-2@4/tapt-adaptive"]
    assert "test_time" not in by_column["pgd-2@4"]  # the run's own number on the same adversarial images
    records = [r for r in records if r.get("test_time") == "tapt"]
    non_adaptive, adaptive = by_column["pgd-2@4/tapt"], by_column["pgd-2@4/tapt-adaptive"]
    assert non_adaptive["test_time_threat"] == "non-adaptive" and "through-adaptation" not in non_adaptive["adaptive"]
    assert non_adaptive["attacked_model"].startswith("the run's model without")
    assert adaptive["test_time_threat"] == "adaptive" and adaptive["adaptive"].startswith("through-adaptation")
    for record in records:
        assert record["test_time"] == "tapt" and "views=3" in record["test_time_options"]
        assert record["test_time_settings"]["lr"] == 5e-4 and record["test_time_cost"]["forward_multiple"] > 1
        assert "inactive" in record["test_time_alignment"]  # APT's image tower learns nothing
    assert by_column["clean/tapt"]["test_time_threat"] == ""
    assert evaluate(*argv) == 0 and len(RunResults(run).records) == before + 8  # skipped, not recomputed
    zero_shot = _copy(runs["ZeroshotCLIP"], tmp_path)
    with pytest.raises(UserError, match="needs learned prompts") as err:
        evaluate(zero_shot, "--attack", "clean", "--test-time", "rtpt")
    assert "\n" not in str(err.value)
