"""``scripts/bench_step_time.py`` runs end to end on the tiny CLIP, and its flags reach the text pass."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ampt.models.text_encoder import TextPassOptions
from ampt.plugins import load_plugins

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_step_time.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    load_plugins("builtin")
    return module


def test_smoke_reports_every_trainer_against_the_floor(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--classes", "3", "--batch", "2", "--steps", "1", "--repeats", "1", "--warmup", "0",
            "--eval-steps", "1", "--k", "2", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"APT", "AMPT", "CoOp"} <= set(result["trainers"])
    assert "ZeroshotCLIP" in result["skipped"]
    for name in result["trainers"]:
        assert result["median_s"][f"{name} train"] > 0 and result["median_s"][f"{name} eval"] > 0
        assert f"{name} " in printed
    assert "x floor" in printed and result["median_s"]["floor train"] > 0


def test_text_encoder_flags_reach_the_trainers_model(bench, tmp_path):
    args = bench.parse_args(["--classes", "3", "--text-checkpoint", "--chunk-size", "7", "--no-shared-prefix", "--k", "2"])
    from ampt.models import build_tiny_clip, save_clip_state_dict

    backbone = str(save_clip_state_dict(build_tiny_clip(), tmp_path / "clip.pt"))
    trainer = bench.build_trainer("AMPT", args, backbone, 32)
    assert trainer.model.text_encoder.options == TextPassOptions(shared_prefix=False, checkpoint=True, chunk_rows=7)
    assert trainer.model.prompt_learner.n_prompts == 2
    default = bench.build_trainer("APT", bench.parse_args(["--classes", "3"]), backbone, 32)
    assert default.model.text_encoder.options == TextPassOptions()
