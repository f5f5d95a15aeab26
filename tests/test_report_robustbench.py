"""``python -m ampt.report ROOT --format robustbench --out DIR``: RobustBench model cards with the ampt block.

Covers: one file per (method, backbone, dataset, shots, train eps, eval eps,
threat model) with the expected names; every file valid against the
published schema (``ampt/report/schemas/robustbench_ampt.schema.json``);
``autoattack_acc`` from the standard AutoAttack record, else the strongest
attack with a footnote and ``unreliable``; the audit's flags; the extension
(seeds, mean/std/n, images, prompt spec, training and evaluation settings,
protocol, base-to-new); refusing to overwrite without ``--force``; ``--out``
required (one-line error); a schema violation is caught.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from ampt.report.__main__ import cli  # noqa: E402
from ampt.report.robustbench import SCHEMA_PATH, validate_card  # noqa: E402

APT_CONFIG = """TRAINER:
  NAME: APT
  APT:
    N_CTX: 4
    CSC: false
ADV:
  TRAIN:
    EPS: 4.0
    ALPHA: -1.0
    STEPS: 3
    LOSS: ce
MODEL:
  BACKBONE:
    NAME: ViT-B/32
    ROBUST_WEIGHTS: /w/tecoa4.pt
SEED: 1
"""
AMPT_CONFIG = APT_CONFIG.replace("NAME: APT\n  APT:\n    N_CTX: 4",
                                 "NAME: AMPT\n  AMPT:\n    N_PROMPTS: 8\n    N_CTX: 4")
CLEAN = {1: 71.0, 2: 72.0, 3: 74.0}
AA = {1: 38.0, 2: 39.5, 3: 41.0}
AA_CONFIG = {"name": "aa", "library": "pyautoattack 0.2.0", "version": "standard",
             "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"], "n_target_classes": 9, "seed": 0}


def record(attack, eps, steps, accuracy, **extra):
    return {"dataset": "EuroSAT", "split": "test", "attack": attack, "eps": eps, "steps": steps, "n_samples": 1000,
            "accuracy": accuracy, "prompt": "learned", "precision": "fp32", **extra}


def write_run(folder: Path, trainer, seed, records, config="", audit=None, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    run = {"trainer": trainer, "dataset": "EuroSAT", "shots": 16, "seed": seed, "train_eps": 4.0, "finished": True,
           "backbone": "ViT-B/32", "robust_weights": "/w/tecoa4.pt", "final_weights": f"w{seed}",
           "train_alpha": 2.6667, "train_steps": 3, "train_loss": "ce", **meta}
    data = {"run": run, "records": records, **({"audit": audit} if audit else {})}
    (folder / "results.json").write_text(json.dumps(data))
    if config:
        (folder / "config.yaml").write_text(config)


@pytest.fixture
def campaign(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2, 3):
        audit = [{"weights": "w2", "created": "2025-01-01T00:00:00", "status": "flag", "flags": ["gradient_health"],
                  "checks": [{"name": "gradient_health", "status": "flag", "numbers": {}, "why": "zero grads"}]}]
        write_run(root / "apt" / f"seed{seed}", "APT", seed,
                  [record("clean", 0, 0, CLEAN[seed]), record("pgd", 4, 100, AA[seed] + 5, alpha=1.0, seed=seed),
                   record("aa", 4, 0, AA[seed], n_samples=200, attack_config=AA_CONFIG, threat_model="Linf",
                          access="white-box+black-box", adaptive="none", image_list="0123456789abcdef",
                          images_sha256=f"{seed:016x}"),
                   record("pgd", 1, 100, 60.0 + seed)],
                  config=APT_CONFIG, audit=audit if seed == 2 else None,
                  link="https://arxiv.org/abs/2403.01849", venue="CVPR 2024")
    for seed in (1, 2):
        write_run(root / "ampt" / f"seed{seed}", "AMPT", seed,
                  [record("clean", 0, 0, 80.0 + seed), record("pgd", 4, 100, 50.0 + seed),
                   record("apgd-t", 4, 100, 47.0 + seed, restarts=1, adaptive="through-router"),
                   record("pgd", 4, 100, 45.0 + seed, eot_iter=10, adaptive="eot")],
                  config=AMPT_CONFIG)
    return root


def run_cli(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["ampt.report", *map(str, argv)])
    return cli()


def cards(out: Path):
    return {p.name: json.loads(p.read_text()) for p in sorted(out.iterdir())}


def test_one_valid_card_per_group(campaign, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rb"
    assert run_cli(monkeypatch, campaign, "--format", "robustbench", "--out", out) == 0
    written = cards(out)
    assert sorted(written) == [
        "AMPT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4.json",
        "APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-1.json",
        "APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4.json",
    ]
    assert sorted(capsys.readouterr().out.split()) == sorted(str(out / n) for n in written)
    schema = json.loads(SCHEMA_PATH.read_text())
    check = jsonschema.Draft202012Validator(schema)
    check.check_schema(schema)
    for card in written.values():
        check.validate(card)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_card_fields_and_extension(campaign, tmp_path, monkeypatch):
    out = tmp_path / "rb"
    assert run_cli(monkeypatch, campaign, "--format", "robustbench", "--out", out) == 0
    written = cards(out)
    apt = written["APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4.json"]
    assert apt["eps"] == "4/255" and apt["dataset"] == "eurosat" and apt["architecture"] == "ViT-B/32"
    assert apt["clean_acc"] == f"{statistics.fmean(CLEAN.values()):.2f}" == "72.33"
    assert apt["autoattack_acc"] == apt["reported"] == "39.50"
    assert apt["link"] == "https://arxiv.org/abs/2403.01849" and apt["venue"] == "CVPR 2024" and apt["authors"] == ""
    assert apt["additional_data"] is False and apt["external"] is None and apt["number_forward_passes"] == 1
    assert apt["unreliable"] is True and "gradient_health (seed 2)" in apt["footnote"]  # AutoAttack, but audit flag
    ext = apt["ampt"]
    assert ext["seeds"] == [1, 2, 3] and ext["shots"] == 16 and ext["std"] == "sample"
    assert ext["robust"]["column"] == "aa@4" and ext["robust"]["source"] == "autoattack"
    assert ext["robust"]["mean"] == pytest.approx(39.5) and ext["robust"]["std"] == pytest.approx(1.5)
    assert ext["robust"]["n"] == 3 and ext["robust"]["values"] == [38.0, 39.5, 41.0]
    assert ext["clean"]["std"] == pytest.approx(statistics.stdev(CLEAN.values()))
    assert sorted(ext["accuracy"]) == ["aa@4", "clean", "pgd-100@4"]
    assert ext["accuracy"]["pgd-100@4"]["mean"] == pytest.approx(44.5)
    assert ext["images"] == {"n_samples": [200, 200, 200], "image_list": "0123456789abcdef",
                             "images_sha256": [f"{s:016x}" for s in (1, 2, 3)]}
    assert ext["evaluation"]["version"] == "standard" and ext["evaluation"]["n_target_classes"] == 9
    assert ext["evaluation"]["library"] == "pyautoattack 0.2.0" and ext["evaluation"]["restarts"] == 1
    assert ext["evaluation"]["access"] == "white-box+black-box" and ext["adaptive"] == "none"
    assert ext["prompt"]["kind"] == "text" and ext["prompt"]["tokens"] == 4 and ext["prompt"]["n_prompts"] == 1
    assert ext["training"] == {"adversarial": True, "eps": 4.0, "steps": 3, "alpha": 2.6667, "loss": "ce",
                               "attack_loss": None, "attack_prompt": None}
    assert ext["protocol"]["label"] == "robust-backbone@4" and ext["protocol"]["robust_backbone"] is True
    assert ext["audit"] == {"status": "flag", "audited_seeds": [2], "flags": {"gradient_health": [2]}}
    assert ext["test_time_optimisation"] is False and ext["base_to_new"] is None

    at1 = written["APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-1.json"]
    assert at1["eps"] == "1/255" and at1["autoattack_acc"] == "62.00"  # no AutoAttack at 1/255: PGD-100
    assert at1["ampt"]["robust"]["source"] == "strongest" and "pgd-100@1" in at1["footnote"]

    ampt = written["AMPT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4.json"]
    assert ampt["unreliable"] is True and ampt["ampt"]["audit"]["status"] == "not audited"
    assert ampt["ampt"]["robust"]["column"] == "pgd-100+eot10@4"  # the lowest of pgd, apgd-t and pgd+EOT
    assert ampt["autoattack_acc"] == "46.50" and ampt["ampt"]["adaptive"] == "eot"
    assert ampt["ampt"]["evaluation"]["eot_iter"] == 10
    assert ampt["ampt"]["prompt"]["kind"] == "mixture" and ampt["ampt"]["prompt"]["n_prompts"] == 8


def test_refuses_to_overwrite_without_force(campaign, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rb"
    assert run_cli(monkeypatch, campaign, "--format", "robustbench", "--out", out) == 0
    target = out / "APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4.json"
    target.write_text("{}")
    capsys.readouterr()
    assert run_cli(monkeypatch, campaign, "--format", "robustbench", "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exist; pass --force" in err
    assert target.read_text() == "{}"  # nothing replaced
    assert run_cli(monkeypatch, campaign, "--format", "robustbench", "--out", out, "--force") == 0
    assert json.loads(target.read_text())["autoattack_acc"] == "39.50"


def test_out_is_required(campaign, monkeypatch, capsys):
    assert run_cli(monkeypatch, campaign, "--format", "robustbench") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --format robustbench") and "--out DIR" in err


def test_base_to_new_card_and_schema_violations(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    config = APT_CONFIG.replace("SEED: 1\n", "DATASET:\n  SUBSAMPLE_CLASSES: base\n")
    for seed in (1, 2):
        write_run(root / f"seed{seed}", "APT", seed,
                  [record("clean", 0, 0, 90.0 + seed), record("clean", 0, 0, 60.0 + seed, subsample="new"),
                   record("aa", 4, 0, 40.0 + seed, subsample="base"), record("aa", 4, 0, 20.0 + seed, subsample="new")],
                  config=config)
    out = tmp_path / "rb"
    assert run_cli(monkeypatch, root, "--format", "robustbench", "--out", out) == 0
    (card,) = cards(out).values()
    assert sorted(cards(out)) == ["APT__ViT-B-32+tecoa4.pt__EuroSAT__16shot__train4__Linf-4__b2n.json"]
    assert card["clean_acc"] == "91.50" and card["autoattack_acc"] == "41.50" and card["unreliable"] is False
    b2n = card["ampt"]["base_to_new"]
    assert b2n["aa@4"]["new"]["mean"] == pytest.approx(21.5)
    assert b2n["aa@4"]["hm"] == pytest.approx(2 * 41.5 * 21.5 / (41.5 + 21.5))
    broken = json.loads(json.dumps(card))
    broken["eps"] = 4 / 255  # a number, not RobustBench's "4/255"
    with pytest.raises(ValueError, match="at eps"):
        validate_card(broken)
    del card["ampt"]["seeds"]
    with pytest.raises(ValueError, match="seeds"):
        validate_card(card)
