"""results.json: run block, de-duplicated records, atomic writes, finished-run guard."""
from __future__ import annotations

import json
import os

import pytest

from ampt.results import FinishedRunError, RunResults, check_not_finished


def _rec(**kw):
    rec = dict(dataset="EuroSAT", split="test", attack="pgd", eps=4, steps=100, n_samples=80,
               accuracy=40.2, prompt="learned")
    rec.update(kw)
    return rec


def test_run_block_and_records_round_trip(tmp_path):
    res = RunResults(tmp_path)
    res.set_run(trainer="CoOp", dataset="EuroSAT", shots=4, seed=0, finished=False)
    assert res.add(_rec(attack="clean", eps=0, steps=0, accuracy=71.3))
    assert res.add(_rec())
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["run"]["seed"] == 0 and data["run"]["finished"] is False
    assert [r["attack"] for r in data["records"]] == ["clean", "pgd"]
    res.mark_finished()
    assert RunResults(tmp_path).finished


def test_same_key_is_not_added_twice_unless_forced(tmp_path):
    res = RunResults(tmp_path)
    assert res.add(_rec(accuracy=40.0))
    assert not res.add(_rec(eps=4.0, accuracy=41.0))  # 4 and 4.0 are the same key
    assert res.has(_rec()) and res.has(dataset="EuroSAT", split="test", attack="pgd", eps=4, steps=100,
                                         n_samples=80, prompt="learned")
    assert res.get(_rec())["accuracy"] == 40.0
    assert res.add(_rec(accuracy=42.0), force=True)
    assert [r["accuracy"] for r in res.records] == [42.0]
    # any key field makes a new record
    for change in (dict(n_samples=10), dict(steps=10), dict(prompt="a photo of a {}."), dict(split="val")):
        assert res.add(_rec(**change))
    assert len(res.records) == 5


def test_missing_fields_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_samples"):
        RunResults(tmp_path).add({"dataset": "X", "split": "test", "attack": "clean", "eps": 0, "steps": 0,
                                  "accuracy": 1.0})


def test_writes_are_atomic(tmp_path, monkeypatch):
    res = RunResults(tmp_path)
    res.add(_rec())
    before = (tmp_path / "results.json").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        res.add(_rec(attack="cw"))
    assert (tmp_path / "results.json").read_text() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == [".results.json.lock", "results.json"]  # no temporary file left


def test_records_from_two_writers_are_kept(tmp_path):
    a, b = RunResults(tmp_path), RunResults(tmp_path)
    a.add(_rec(attack="clean", eps=0, steps=0))
    b.add(_rec())
    a.set_run(finished=True)
    assert len(RunResults(tmp_path).records) == 2


def test_finished_run_guard_and_reset(tmp_path):
    check_not_finished(tmp_path)  # no file: fine
    res = RunResults(tmp_path)
    res.set_run(finished=False)
    check_not_finished(tmp_path)
    res.mark_finished()
    with pytest.raises(FinishedRunError, match="--force"):
        check_not_finished(tmp_path)
    check_not_finished(tmp_path, force=True)
    backup = res.reset()
    assert backup is not None and backup.exists() and not res.path.exists()


def test_invalid_json_is_reported_with_the_path(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json"):
        RunResults(tmp_path).records
