"""ampt.report: column names of the new attacks, the audit's flags and table, protocol labels and tables.

Covers: ``column_id`` / ``column_order`` through ``ampt.attacks.naming``
(restarts, EOT, BPDA, AutoAttack versions, single AutoAttack attacks) with
the old names unchanged and ``--columns aa-rand@4 apgd-t@4``; the current
audit (weights, latest ``created``) giving ``audit: ... (seed 2)`` flags that
hide no number, and the ``--audit`` table; protocol labels from the run
block, settings and records; rows of two protocols in two tables (zero-shot
baselines in the table of their backbone), one protocol in one table with a
one-line caption, ``--mix-protocols`` in one table with a Protocol column;
json and csv rows carrying their protocol.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from ampt.report import build_report, load_report
from ampt.report.__main__ import cli
from ampt.report.aggregate import column_id, column_order
from ampt.report.collect import Run
from ampt.report.protocols import derive_protocol


def record(attack, eps, steps, accuracy, dataset="EuroSAT", **extra):
    return {"dataset": dataset, "split": "test", "attack": attack, "eps": eps, "steps": steps, "n_samples": 100,
            "accuracy": accuracy, "prompt": "learned", **extra}


def write_run(folder: Path, trainer, seed, records, eps=4.0, dataset="EuroSAT", shots=4, audit=None, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    run = {"trainer": trainer, "dataset": dataset, "shots": shots, "seed": seed, "train_eps": eps,
           "finished": True, **meta}
    data = {"run": run, "records": records, **({"audit": audit} if audit is not None else {})}
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def find(rows, method, dataset="EuroSAT"):
    return next(r for r in rows if r.method == method and r.dataset == dataset)


# ---------------------------------------------------------------- columns
NEW_ATTACKS = [
    (record("pgd", 4, 100, 1.0), "pgd-100@4"),
    (record("aa", 4, 0, 1.0), "aa@4"),
    (record("clean", 0, 0, 1.0), "clean"),
    (record("pgd", 4, 100, 1.0, restarts=5), "pgd-100x5@4"),
    (record("pgd", 4, 100, 1.0, bpda=True), "pgd-100+bpda@4"),
    (record("pgd", 4, 100, 1.0, eot_iter=20), "pgd-100+eot20@4"),
    (record("aa-rand", 4, 0, 1.0, eot_iter=20), "aa-rand@4"),
    (record("aa-custom", 4, 0, 1.0, attack_options="apgd-ce,apgd-t"), "aa-custom(apgd-ce,apgd-t)@4"),
    (record("apgd-t", 1, 100, 1.0), "apgd-t@1"),
    (record("square", 4, 5000, 1.0), "square@4"),
    (record("square", 4, 1000, 1.0), "square-1000@4"),
]


@pytest.mark.parametrize("rec,name", NEW_ATTACKS, ids=[n for _, n in NEW_ATTACKS])
def test_column_names_of_old_and_new_attacks(rec, name):
    assert column_id(rec, "learned") == name


def test_column_suffixes_and_order():
    assert column_id(record("pgd", 4, 10, 1.0, prompt="a photo of a {}."), "learned") == "pgd-10@4 [a photo of a {}.]"
    assert column_id(record("aa-plus", 4, 0, 1.0, precision="bf16"), "learned") == "aa-plus@4 [bf16]"
    columns = ["pgd-100@4 [a photo of a {}.]", "pgd-100x5@4", "apgd-t@1", "aa-rand@4", "pgd-100@4", "aa@4",
               "pgd-10@4", "pgd-100+bpda@4", "clean", "pgd-100@1", "aa-custom(apgd-ce,apgd-t)@4", "pgd-100+eot20@4"]
    assert sorted(columns, key=column_order) == [
        "clean", "aa@4", "aa-custom(apgd-ce,apgd-t)@4", "aa-rand@4", "apgd-t@1", "pgd-100@1", "pgd-10@4",
        "pgd-100@4", "pgd-100+bpda@4", "pgd-100+eot20@4", "pgd-100x5@4",  # by restarts, then EOT, then BPDA
        "pgd-100@4 [a photo of a {}.]"]


def test_columns_option_takes_the_new_names(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path / f"s{seed}", "APT", seed,
                  [record("clean", 0, 0, 80.0), record("pgd", 4, 100, 40.0 + seed),
                   record("aa-rand", 4, 0, 30.0 + seed, eot_iter=20), record("apgd-t", 4, 100, 33.0),
                   record("aa-custom", 4, 0, 31.0, attack_options="apgd-ce,apgd-t")])
    report = load_report([tmp_path], columns=["aa-rand@4", "apgd-t@4"])
    assert report.columns == ["aa-rand@4", "apgd-t@4"]
    assert find(report.rows, "APT").get("aa-rand@4").values == [31.0, 32.0]
    assert load_report([tmp_path]).columns == ["clean", "aa-custom(apgd-ce,apgd-t)@4", "aa-rand@4", "apgd-t@4",
                                               "pgd-100@4"]
    assert "| aa-rand@4" in build_report([tmp_path], columns=["aa-rand@4", "apgd-t@4"]).replace("|  ", "| ")
    with pytest.raises(ValueError, match="aa-plus@4 not in the records"):
        load_report([tmp_path], columns=["aa-plus@4"])


# ---------------------------------------------------------------- audit
def audit_entry(created, status, flags=(), weights="w1", checks=None):
    names = ("determinism", "gradient_health", "convergence", "black_box", "large_eps", "transfer", "declared_parts")
    checks = checks or [{"name": n, "status": "flag" if n in flags else ("skip" if n == "transfer" else "pass"),
                         "numbers": {}, "why": ""} for n in names]
    return {"weights": weights, "checkpoint_epoch": 5, "prompt": "learned", "eps": 4.0, "n_samples": 100, "seed": 1,
            "precision": "fp32", "images_sha256": "ab" * 8, "seconds": 1.0, "created": created, "status": status,
            "flags": list(flags), "checks": checks}


@pytest.fixture
def audited(tmp_path):
    """APT seeds 1-3 (seed 2 flagged on gradient_health and convergence; seed 3 not audited), AMPT unaudited."""
    flagged = ["gradient_health", "convergence"]
    audits = {
        1: [audit_entry("2025-01-01T00:00:00", "flag", flagged),  # older: superseded by the pass below
            audit_entry("2025-02-01T00:00:00", "pass"),
            audit_entry("2025-03-01T00:00:00", "flag", ["determinism"], weights="stale")],  # other weights
        2: [audit_entry("2025-02-01T00:00:00", "flag", flagged)],
        3: None,
    }
    for seed, audit in audits.items():
        write_run(tmp_path / "apt" / f"s{seed}", "APT", seed,
                  [record("clean", 0, 0, 80.0 + seed), record("pgd", 4, 100, 40.0 + seed)],
                  audit=audit, final_weights="w1")
    write_run(tmp_path / "ampt" / "s1", "AMPT", 1, [record("clean", 0, 0, 85.0), record("pgd", 4, 100, 45.0)])
    return tmp_path


def test_current_audit_flags_a_row_without_hiding_its_numbers(audited):
    report = load_report([audited])
    apt = find(report.rows, "APT")
    assert sorted(apt.audits) == [1, 2]
    assert apt.audits[1]["created"] == "2025-02-01T00:00:00"  # latest of the entries on the final weights
    assert apt.get("pgd-100@4").values == [41.0, 42.0, 43.0]  # the flagged seed 2 still counts
    text = build_report([audited])
    line = next(l for l in text.splitlines() if l.startswith("| APT"))
    assert "42.0 ± 1.0" in line and line.rstrip(" |").endswith("audit: gradient_health, convergence (seed 2)")
    assert "audit" not in next(l for l in text.splitlines() if l.startswith("| AMPT"))


def test_audit_table(audited):
    assert "Audit." not in build_report([audited])
    text = build_report([audited], show_audit=True)
    table = text[text.index("Audit."):].splitlines()
    header = [c.strip() for c in table[2].strip("|").split("|")]
    assert header == ["Method", "Dataset", "Shots", "Train eps", "Audited", "determinism", "gradient_health",
                      "convergence", "black_box", "large_eps", "transfer", "declared_parts"]
    apt = [c.strip() for c in next(l for l in table if l.startswith("| APT")).strip("|").split("|")]
    assert apt == ["APT", "EuroSAT", "4", "4", "2/3", "pass", "flag (seed 2)", "flag (seed 2)", "pass", "pass",
                   "skip", "pass"]
    ampt = [c.strip() for c in next(l for l in table if l.startswith("| AMPT")).strip("|").split("|")]
    assert ampt[4:] == ["0/1"] + ["—"] * 7
    data = json.loads(build_report([audited], fmt="json"))
    (apt_json,) = [a for a in data["audit"] if a["method"] == "APT"]
    assert apt_json["audited_seeds"] == [1, 2] and apt_json["checks"]["convergence"]["flagged_seeds"] == [2]
    assert build_report([audited], fmt="latex", show_audit=True).count(r"\begin{table}") == 1  # no error
    assert build_report([audited], fmt="csv", show_audit=True).startswith("table,")


def test_audit_cli_flag(audited, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ampt.report", str(audited), "--audit"])
    assert cli() == 0
    assert "| APT      | EuroSAT   | 4       | 4           | 2/3" in capsys.readouterr().out


# ---------------------------------------------------------------- protocol labels
def run_of(trainer="APT", eps=4.0, records=(), settings=None, **meta):
    return Run(path=Path("x"), trainer=trainer, dataset="EuroSAT", shots=4, seed=1, train_eps=eps, finished=True,
               records=list(records), settings=settings or {}, meta=meta)


@pytest.mark.parametrize("run,label,robust", [
    (run_of(backbone="ViT-B/32", robust_weights="/w/tecoa_eps4.pt"), "robust-backbone@4", True),
    (run_of(eps=1, backbone="ViT-B/32"), "vanilla-backbone@1", False),
    (run_of(backbone="hf-hub:chs20/tecoa4-clip"), "robust-backbone@4", True),
    (run_of(backbone="hf-hub:chs20/fare2-clip"), "robust-backbone@4", True),
    (run_of(backbone="open_clip:ViT-B-32 (laion2b_s34b_b79k)"), "vanilla-backbone@4", False),
    (run_of(backbone="/out/demo/backbone/tiny_clip_digits_tecoa.pt"), "robust-backbone@4", True),
    (run_of(backbone="/models/mystery.pt"), "backbone-mystery.pt@4", None),
    (run_of(backbone="/models/mystery.pt", robust_backbone=True), "robust-backbone@4", True),
    (run_of(settings={"MODEL.BACKBONE.NAME": "ViT-B/16", "MODEL.BACKBONE.ROBUST_WEIGHTS": "r.pt"}),
     "robust-backbone@4", True),
    (run_of(), "backbone-unknown@4", None),
    (run_of(trainer="ZeroshotCLIP", eps=0, backbone="ViT-B/32"), "zero-shot", False),
    (run_of(backbone="ViT-B/32", records=[record("pgd", 4, 10, 1.0, test_time_optimisation=True)]),
     "test-time", False),
])
def test_protocol_labels(run, label, robust):
    protocol = derive_protocol(run)
    assert (protocol.label, protocol.robust) == (label, robust)
    assert protocol.signal.startswith("unknown") == (robust is None)


# ---------------------------------------------------------------- protocol tables
@pytest.fixture
def two_protocols(tmp_path):
    """APT on a robust (TeCoA) ViT-B/32 at 4/255, FAP on the vanilla one at 1/255, a zero-shot run of each."""
    robust = {"backbone": "ViT-B/32", "robust_weights": "/w/tecoa4.pt"}
    for seed in (1, 2):
        write_run(tmp_path / "apt" / f"s{seed}", "APT", seed,
                  [record("clean", 0, 0, 70.0 + seed), record("pgd", 4, 100, 40.0 + seed)], **robust)
        write_run(tmp_path / "fap" / f"s{seed}", "FAP", seed,
                  [record("clean", 0, 0, 80.0 + seed), record("pgd", 1, 100, 60.0 + seed)], eps=1,
                  backbone="ViT-B/32")
    write_run(tmp_path / "zs-robust" / "s1", "ZeroshotCLIP", 1, [record("clean", 0, 0, 50.0),
                                                                 record("pgd", 4, 100, 20.0)], eps=0, **robust)
    write_run(tmp_path / "zs-vanilla" / "s1", "ZeroshotCLIP", 1, [record("clean", 0, 0, 60.0),
                                                                  record("pgd", 1, 100, 5.0)], eps=0,
              backbone="ViT-B/32")
    return tmp_path


def _tables(text):
    """``heading -> [first cell of each table line]``."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("### Protocol: "):
            heading = line[len("### Protocol: "):]
            out[heading] = []
        elif line.startswith("| ") and not line.startswith("| Method") and heading is not None:
            out[heading].append(line.strip("| ").split("|")[0].strip() + " " + line.split("|")[6].strip())
    return out


def test_two_protocols_are_two_tables_with_their_zero_shot_baselines(two_protocols):
    text = build_report([two_protocols])
    tables = _tables(text)
    assert list(tables) == ["robust backbone, train eps 4/255", "vanilla backbone, train eps 1/255"]
    # method + the first accuracy (clean) cell of each row: each zero-shot run in its backbone's table only
    assert tables["robust backbone, train eps 4/255"] == ["ZeroshotCLIP 50.0", "APT 71.5 ± 0.7"]
    assert tables["vanilla backbone, train eps 1/255"] == ["ZeroshotCLIP 60.0", "FAP 81.5 ± 0.7"]
    assert text.count("Few-shot.") == 2
    robust_part = text[:text.index("### Protocol: vanilla")]
    assert "pgd-100@4" in robust_part and "pgd-100@1" not in robust_part  # each table its own columns and HM
    assert "HM (pgd-100@1)" in text[text.index("### Protocol: vanilla"):]


def test_mix_protocols_gives_one_table_with_a_protocol_column(two_protocols):
    text = build_report([two_protocols], mix_protocols=True)
    assert "### Protocol" not in text and text.count("Few-shot.") == 1
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| Method")).strip("|").split("|")]
    assert header[:6] == ["Method", "Dataset", "Shots", "Train eps", "Protocol", "Seeds"]
    protocols = sorted((l.split("|")[1].strip(), l.split("|")[5].strip()) for l in text.splitlines()
                       if l.startswith("| ") and not l.startswith("| Method"))
    assert protocols == [("APT", "robust-backbone@4"), ("FAP", "vanilla-backbone@1"),
                         ("ZeroshotCLIP", "zero-shot (ViT-B/32)"), ("ZeroshotCLIP", "zero-shot (ViT-B/32+tecoa4.pt)")]


def test_json_and_csv_rows_carry_their_protocol(two_protocols):
    data = json.loads(build_report([two_protocols], fmt="json"))
    by_method = {}
    for row in data["rows"]:
        by_method.setdefault(row["method"], []).append(row)
    assert by_method["APT"][0]["protocol"] == "robust-backbone@4"
    assert by_method["APT"][0]["protocol_info"]["robust_signal"].startswith("robust visual weights")
    assert sorted(r["protocol_tables"][0] for r in by_method["ZeroshotCLIP"]) == ["robust-backbone@4",
                                                                                  "vanilla-backbone@1"]
    assert [p["label"] for p in data["protocols"]] == ["robust-backbone@4", "vanilla-backbone@1"]
    lines = list(csv.DictReader(io.StringIO(build_report([two_protocols], fmt="csv"))))
    assert {(l["method"], l["protocol"]) for l in lines} == {
        ("APT", "robust-backbone@4"), ("FAP", "vanilla-backbone@1"), ("ZeroshotCLIP", "zero-shot")}
    latex = build_report([two_protocols], fmt="latex")
    assert latex.count(r"\begin{table}") == 2 and "vanilla backbone, train eps 1/255" in latex


def test_one_protocol_is_one_table_with_a_caption(tmp_path):
    """The demo's runs: zero-shot, clean-trained CoOp and adversarial APT/AMPT on one robust backbone."""
    backbone = {"backbone": "/out/demo/backbone/tiny_clip_digits_tecoa.pt"}
    for trainer, eps, clean in (("ZeroshotCLIP", 0, 52.3), ("CoOp", 0, 94.2), ("APT", 4, 93.7), ("AMPT", 4, 95.2)):
        write_run(tmp_path / trainer / "seed1", trainer, 1,
                  [record("clean", 0, 0, clean, dataset="Digits"), record("pgd", 4, 10, clean - 10, dataset="Digits")],
                  eps=eps, dataset="Digits", **backbone)
    text = build_report([tmp_path])
    assert "### Protocol" not in text and text.count("Few-shot.") == 1
    caption = text.splitlines()[0]
    assert caption.endswith(" Protocol: robust backbone, train eps 4/255.")
    methods = [l.split("|")[1].strip() for l in text.splitlines() if l.startswith("| ") and "Method" not in l]
    assert methods == ["ZeroshotCLIP", "CoOp", "APT", "AMPT"]
    assert "Protocol" not in text.splitlines()[2]  # no Protocol column
    assert build_report([tmp_path], mix_protocols=True) == text  # nothing to mix
    # a vanilla FAP run at 1/255 makes a second table; the demo's four stay together in theirs
    write_run(tmp_path / "FAP" / "seed1", "FAP", 1, [record("clean", 0, 0, 90.0, dataset="Digits"),
                                                      record("pgd", 1, 10, 70.0, dataset="Digits")],
              eps=1, dataset="Digits", backbone="ViT-B/32")
    tables = _tables(build_report([tmp_path]))
    assert [m.split()[0] for m in tables["robust backbone, train eps 4/255"]] == ["ZeroshotCLIP", "CoOp", "APT", "AMPT"]
    assert [m.split()[0] for m in tables["vanilla backbone, train eps 1/255"]] == ["FAP"]
