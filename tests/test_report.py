"""ampt.report on synthetic results.json files and CoOp/APT logs: numbers against hand computations.

Covers: mean, sample and population std, seed counts, missing seeds and
unfinished runs flagged; the dataset average in CoOp's order; the harmonic
mean and its attack; method labels from differing config keys; the
base-to-new layout; LaTeX (booktabs, balanced rows) and CSV (csv module)
parse; JSON; the router table from router_stats.json; every plot is a
non-empty PNG (no router figure for one prompt); CoOp- and APT-style
log.txt folders are read and labelled as migrated; the CLI's one-line errors.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from ampt.report import build_report, load_report
from ampt.report.__main__ import cli
from ampt.report.migrate import read_log_accuracy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLEAN = {"EuroSAT": {1: 80.0, 2: 82.0, 3: 87.0}, "DTD": {1: 60.0, 2: 61.0}, "Caltech101": {1: 90.0, 2: 91.0, 3: 92.0}}
ROBUST = {"EuroSAT": {1: 40.0, 2: 44.0, 3: 45.0}, "DTD": {1: 30.0, 2: 33.0}, "Caltech101": {1: 50.0, 2: 52.0, 3: 51.0}}


def record(dataset, attack, eps, steps, accuracy, **extra):
    return {"dataset": dataset, "split": "test", "attack": attack, "eps": eps, "steps": steps, "n_samples": 100,
            "accuracy": accuracy, "prompt": "learned", **extra}


def write_run(folder: Path, trainer, dataset, seed, records, shots=4, eps=4, finished=True, config="", method=None):
    folder.mkdir(parents=True, exist_ok=True)
    run = {"trainer": trainer, "dataset": dataset, "shots": shots, "seed": seed, "train_eps": eps,
           "finished": finished, **({"method": method} if method else {})}
    (folder / "results.json").write_text(json.dumps({"run": run, "records": records}))
    if config:
        (folder / "config.yaml").write_text(config)
    return folder


def ampt_config(k: int) -> str:
    return f"TRAINER:\n  NAME: AMPT\n  AMPT:\n    N_PROMPTS: {k}\n    N_CTX: 4\nSEED: 1\nOUTPUT_DIR: x{k}\n"


@pytest.fixture
def campaign(tmp_path):
    """APT on 3 datasets (DTD lacks seed 3, EuroSAT also has an unfinished seed 4), AMPT K=4 and K=8 on EuroSAT."""
    root = tmp_path / "runs"
    for dataset in CLEAN:
        for seed in CLEAN[dataset]:
            write_run(root / "apt" / dataset / f"seed{seed}", "APT", dataset, seed,
                      [record(dataset, "clean", 0, 0, CLEAN[dataset][seed]),
                       record(dataset, "pgd", 4, 100, ROBUST[dataset][seed]),
                       record(dataset, "pgd", 4, 100, 1.0, n_samples=10)])  # a subset record: not the number
    write_run(root / "apt" / "EuroSAT" / "seed4", "APT", "EuroSAT", 4, [], finished=False)
    for k, clean in ((4, 85.0), (8, 88.0)):
        write_run(root / "ampt" / f"k{k}" / "seed1", "AMPT", "EuroSAT", 1,
                  [record("EuroSAT", "clean", 0, 0, clean), record("EuroSAT", "pgd", 4, 100, clean / 2)],
                  config=ampt_config(k))
    return root


def hm(a, b):
    return 2 * a * b / (a + b)


def find(rows, method, dataset):
    return next(r for r in rows if r.method == method and r.dataset == dataset)


def test_mean_std_seeds_and_flags_equal_a_hand_computation(campaign):
    report = load_report([campaign])
    eurosat = find(report.rows, "APT", "EuroSAT")
    assert eurosat.seeds == [1, 2, 3] and eurosat.unfinished == [4] and eurosat.missing == []
    clean = eurosat.get("clean")
    assert clean.mean == pytest.approx(83.0) and clean.n == 3
    assert clean.std == pytest.approx(math.sqrt(((80 - 83) ** 2 + (82 - 83) ** 2 + (87 - 83) ** 2) / 2))
    robust = eurosat.get("pgd-100@4")
    assert robust.values == [40.0, 44.0, 45.0]  # the full test set's record, not the 10-image subset
    dtd = find(report.rows, "APT", "DTD")
    assert dtd.seeds == [1, 2] and dtd.missing == []  # no run of DTD has seed 3: not expected by default
    assert find(report.rows, "AMPT N_PROMPTS=4", "EuroSAT").missing == [2, 3, 4]  # APT has them on EuroSAT
    assert report.hm_attack == "pgd-100@4"
    text = build_report([campaign])
    assert "83.0 ± 3.6" in text and "unfinished seed 4" in text and "missing seed 2,3,4" in text
    assert "sample std (n-1)" in text
    population = load_report([campaign], std="population")
    assert find(population.rows, "APT", "EuroSAT").get("clean").std == pytest.approx(statistics.pstdev([80, 82, 87]))
    assert "population std (n)" in build_report([campaign], std="population")


def test_expected_seeds_harmonic_mean_and_method_labels(campaign):
    report = load_report([campaign], expected_seeds=[1, 2, 3])
    assert find(report.rows, "APT", "DTD").missing == [3]
    eurosat = find(report.rows, "APT", "EuroSAT")
    from ampt.report.aggregate import row_harmonic_mean

    assert row_harmonic_mean(eurosat, report.hm_attack) == pytest.approx(hm(83.0, 43.0))
    methods = sorted({r.method for r in report.rows})
    assert methods == ["AMPT N_PROMPTS=4", "AMPT N_PROMPTS=8", "APT"]  # N_CTX is equal, OUTPUT_DIR ignored
    assert find(report.rows, "AMPT N_PROMPTS=8", "EuroSAT").missing == [2, 3]
    write_run(campaign / "sweep" / "seed1", "AMPT", "EuroSAT", 1, [record("EuroSAT", "clean", 0, 0, 70.0)],
              config=ampt_config(4), method="AMPT-K4-sweep")
    assert "AMPT-K4-sweep" in {r.method for r in load_report([campaign]).rows}  # run.method wins


def test_a_column_measured_on_an_image_subset_says_so_in_the_caption(campaign):
    assert "subset" not in load_report([campaign]).caption()  # pgd-100@4's 10-image record lost to the full one
    for seed in (1, 2):
        write_run(campaign / "aa" / f"seed{seed}", "APT", "Digits", seed,
                  [record("Digits", "clean", 0, 0, 90.0, n_samples=600),
                   record("Digits", "pgd", 4, 100, 80.0, n_samples=600),
                   record("Digits", "aa", 4, 0, 85.0, n_samples=200)])
    report = load_report([campaign])
    assert report.subsets == {"aa@4": [200]}
    assert "on a subset of the test images: aa@4 (200 images per run)" in build_report([campaign])
    assert "subset" not in load_report([campaign], columns=["clean", "pgd-100@4"]).caption()  # column not shown


def test_dataset_average_in_coop_order(campaign):
    report = load_report([campaign])
    apt = [r.dataset for r in report.rows if r.method == "APT"]
    assert apt == ["Caltech101", "DTD", "EuroSAT"]  # CoOp's order: Caltech101 ... DTD, EuroSAT
    average = find(report.averages, "APT", "Average")
    assert average.n_datasets == 3
    assert average.get("clean").mean == pytest.approx(statistics.fmean([91.0, 60.5, 83.0]))
    assert average.get("pgd-100@4").mean == pytest.approx(statistics.fmean([51.0, 31.5, 43.0]))
    partial = find(report.averages, "AMPT N_PROMPTS=4", "Average")
    assert (partial.n_datasets, partial.of_datasets) == (1, 3)
    assert "1 of 3 datasets" in build_report([campaign])


def test_hm_attack_default_prefers_the_training_eps_on_a_tie(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path / "apt" / f"seed{seed}", "APT", "EuroSAT", seed,
                  [record("EuroSAT", "clean", 0, 0, 80.0), record("EuroSAT", "pgd", 4, 10, 41.0),
                   record("EuroSAT", "pgd", 4, 100, 40.0), record("EuroSAT", "pgd", 8, 100, 10.0)])
    report = load_report([tmp_path])
    assert find(report.rows, "APT", "EuroSAT").train_eps == 4
    assert report.hm_attack == "pgd-100@4"  # not pgd-100@8: same count and steps, but not the training eps


def test_hm_attack_choice_and_errors(campaign, capsys, monkeypatch):
    write_run(campaign / "apt" / "EuroSAT" / "seed1", "APT", "EuroSAT", 1,
              [record("EuroSAT", "clean", 0, 0, 80.0), record("EuroSAT", "pgd", 4, 100, 40.0),
               record("EuroSAT", "aa", 4, 0, 30.0)])
    report = load_report([campaign], hm_attack="aa@4")
    assert report.hm_attack == "aa@4"
    with pytest.raises(ValueError, match="pgd-100@4"):
        load_report([campaign], hm_attack="pgd-7@4")
    monkeypatch.setattr(sys, "argv", ["ampt.report", str(campaign / "nowhere")])
    assert cli() == 2
    assert capsys.readouterr().err.startswith("error: Report root")


def test_latex_is_balanced_booktabs_and_csv_parses(campaign):
    latex = build_report([campaign], fmt="latex")
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    begin = latex.index(r"\begin{tabular}{")
    columns = len(latex[begin + len(r"\begin{tabular}{"):latex.index("}", begin + 16)])
    lines = [line for line in latex.splitlines() if line.endswith(r"\\")]
    assert len(lines) == 1 + 5 + 3  # header, 5 rows, 3 averages
    for line in lines:
        assert line.replace(r"\&", "").count("&") == columns - 1
    assert r"$\pm$" in latex and "±" not in latex and r"N\_PROMPTS" in latex
    rows = list(csv.DictReader(io.StringIO(build_report([campaign], fmt="csv"))))
    clean = next(r for r in rows if r["method"] == "APT" and r["dataset"] == "EuroSAT" and r["column"] == "clean")
    assert float(clean["mean"]) == pytest.approx(83.0) and clean["n"] == "3" and clean["unfinished_seeds"] == "4"
    hm_line = next(r for r in rows if r["method"] == "APT" and r["dataset"] == "EuroSAT" and r["column"].startswith("HM"))
    assert float(hm_line["mean"]) == pytest.approx(hm(83.0, 43.0))
    data = json.loads(build_report([campaign], fmt="json"))
    assert data["std"] == "sample" and data["hm_attack"] == "pgd-100@4" and len(data["averages"]) == 3


def test_base_to_new_layout(tmp_path):
    config = "TRAINER:\n  NAME: CoOp\nDATASET:\n  SUBSAMPLE_CLASSES: base\n"
    for seed, (base, new) in {1: (90.0, 60.0), 2: (92.0, 64.0)}.items():
        write_run(tmp_path / f"seed{seed}", "CoOp", "EuroSAT", seed,
                  [record("EuroSAT", "clean", 0, 0, base),  # the training's own test: base classes
                   record("EuroSAT", "clean", 0, 0, new, subsample="new"),
                   record("EuroSAT", "pgd", 4, 10, base / 2, subsample="base"),
                   record("EuroSAT", "pgd", 4, 10, new / 2, subsample="new")], eps=0, config=config)
    report = load_report([tmp_path])
    assert report.rows == [] and len(report.b2n_rows) == 1
    text = build_report([tmp_path])
    assert "Clean base" in text and "pgd-10@4 HM" in text
    assert f"{hm(91.0, 62.0):.1f}" in text and f"{hm(45.5, 31.0):.1f}" in text


def _coop_log(folder: Path, accuracy: str, finished: bool = True) -> None:
    folder.mkdir(parents=True)
    lines = ["epoch [1/50] batch [1/1] loss 1.0", "=> result", "* accuracy: 11.0%"]
    if finished:
        lines += ["Finish training", "Deploy the last-epoch model", "=> result", "* total: 100",
                  f"* accuracy: {accuracy}%", "* error: 10.0%"]
    (folder / "log.txt").write_text("\n".join(lines) + "\n")


def test_coop_and_apt_logs_are_read_and_labelled(tmp_path):
    coop = tmp_path / "output" / "eurosat" / "CoOp" / "vit_b16_ep50_4shots" / "nctx16_cscFalse_ctpend"
    _coop_log(coop / "seed1", "75.5")
    _coop_log(coop / "seed2", "76.5")
    _coop_log(coop / "seed3", "0", finished=False)
    apt = tmp_path / "output" / "oxford_pets" / "APT" / "vit_b32_4shots" / "nctx16_cscFalse_ctpend" / "eps4_alpha2.67_step3"
    _coop_log(apt / "seed1", "81.25")
    (apt / "seed1" / "evaluation.yaml").write_text("prompter:\n  clean: 81.0\n  pgd: 40.5\n")
    assert read_log_accuracy(coop / "seed1" / "log.txt") == (75.5, True)
    assert read_log_accuracy(coop / "seed3" / "log.txt") == (None, False)
    report = load_report([tmp_path])
    coop_row = find(report.rows, "CoOp (CoOp log)", "EuroSAT")
    assert coop_row.shots == 4 and coop_row.seeds == [1, 2] and coop_row.unfinished == [3]
    assert coop_row.get("clean").mean == pytest.approx(76.0)
    apt_row = find(report.rows, "APT (APT log)", "OxfordPets")
    assert apt_row.train_eps == 4 and apt_row.get("clean").values == [81.25] and apt_row.get("pgd-100@4").mean == 40.5


def test_every_plot_is_a_png(campaign, tmp_path):
    epochs = [{"epoch": e, "mean_weights": [0.25 + 0.01 * e, 0.25, 0.25, 0.25 - 0.01 * e], "entropy": 1.38 - 0.01 * e,
               "entropy_of_mean": 1.386 - 0.005 * e, "max_entropy": 1.38629, "n_images": 40} for e in range(1, 6)]
    (campaign / "ampt" / "k4" / "seed1" / "router_stats.json").write_text(json.dumps({"epochs": epochs}))
    one_prompt = [{**e, "mean_weights": [1.0], "entropy": 0.0, "entropy_of_mean": 0.0, "max_entropy": 0.0}
                  for e in epochs]  # nothing to route: no router figure
    (campaign / "ampt" / "k8" / "seed1" / "router_stats.json").write_text(json.dumps({"epochs": one_prompt}))
    write_run(campaign / "apt16" / "seed1", "APT", "EuroSAT", 1,
              [record("EuroSAT", "clean", 0, 0, 90.0), record("EuroSAT", "pgd", 4, 100, 50.0),
               record("EuroSAT", "pgd", 1, 100, 70.0)], shots=16)
    plots = tmp_path / "plots"
    build_report([campaign], plots_dir=plots)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["acc_vs_robustness_16shot.png", "acc_vs_robustness_4shot.png", "accuracy_vs_eps_16shot.png",
                     "accuracy_vs_eps_4shot.png", "accuracy_vs_shots.png",
                     "router_AMPT_N_PROMPTS=4_EuroSAT_4shot_eps4.png"]
    for path in plots.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_router_table_means_the_seeds_router_stats(tmp_path):
    def stats(entropy, tv, bank, mi):
        epochs = [{"epoch": 1, "mean_weights": [0.5, 0.5], "entropy": 0.69, "max_entropy": 0.69315,
                   "tv_from_batch_mean": 0.0, "bank_cosine": 0.9},
                  {"epoch": 2, "mean_weights": [0.6, 0.4], "entropy": entropy, "max_entropy": 0.69315,
                   "tv_from_batch_mean": tv, "bank_cosine": bank}]
        return {"epochs": epochs, "test": {"clean": {"mi_label": mi}, "tv_clean_to_attacked": 2 * mi}}

    for seed, values in ((1, (0.5, 0.1, 0.4, 0.02)), (2, (0.3, 0.3, 0.6, 0.04)), (3, (0.0, 0.0, 0.0, 0.0))):
        run = write_run(tmp_path / "k2" / f"seed{seed}", "AMPT", "EuroSAT", seed,
                        [record("EuroSAT", "clean", 0, 0, 80.0)], method="AMPT-2", finished=seed < 3)
        (run / "router_stats.json").write_text(json.dumps(stats(*values)))  # seed 3 unfinished: left out
    write_run(tmp_path / "apt" / "seed1", "APT", "EuroSAT", 1, [record("EuroSAT", "clean", 0, 0, 70.0)])

    report = load_report([tmp_path])
    (row,) = report.router_rows  # APT wrote no router_stats.json
    assert (row.method, row.seeds) == ("AMPT-2", [1, 2])
    assert row.stats["entropy"].mean == pytest.approx(0.4) and row.stats["entropy"].std == pytest.approx(
        statistics.stdev([0.5, 0.3]))
    assert row.stats["bank_cosine"].mean == pytest.approx(0.5) and row.stats["k"].mean == 2
    assert row.stats["mi_label"].mean == pytest.approx(0.03)
    assert row.stats["tv_clean_to_attacked"].mean == pytest.approx(0.06)
    text = build_report([tmp_path])
    assert "Router diagnostics" in text
    assert "| AMPT-2   | EuroSAT   | 4       | 4           | 2       | 2   | 0.400 ± 0.141 | 0.693   |" in text
    data = json.loads(build_report([tmp_path], fmt="json"))
    assert data["router"][0]["columns"]["tv_spread"]["values"] == [0.1, 0.3]
    lines = [r for r in csv.DictReader(io.StringIO(build_report([tmp_path], fmt="csv"))) if r["table"] == "router"]
    assert {r["column"] for r in lines} == {"k", "entropy", "log_k", "tv_spread", "bank_cosine", "mi_label",
                                            "tv_clean_to_attacked"}
    assert build_report([tmp_path], fmt="latex").count(r"\begin{table}") == 2
