"""LR schedule values per epoch (Dassl's, in closed form) and optimizer building."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn

from ampt.config import get_cfg_default
from ampt.optim import build_lr_scheduler, build_optimizer

BASE = 0.002


def _optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    cfg.NAME, cfg.LR, cfg.LR_SCHEDULER = "sgd", BASE, "cosine"
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _lrs_per_epoch(optim_cfg, n_epochs=None):
    """LR in force during each epoch when stepped once per epoch (as Dassl trainers do)."""
    param = nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([param], optim_cfg)
    sched = build_lr_scheduler(optimizer, optim_cfg)
    values = []
    for _ in range(n_epochs or optim_cfg.MAX_EPOCH):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return values


def cosine(t, t_max, base=BASE):
    return base * (1 + math.cos(math.pi * t / t_max)) / 2


def test_coop_schedule_constant_warmup_then_lagging_cosine():
    E = 10
    values = _lrs_per_epoch(_optim_cfg(MAX_EPOCH=E, WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5))
    expected = [1e-5] + [cosine(e - 2, E) for e in range(2, E + 1)]  # epoch e (1-based) >= 2: cosine(e - 2)
    assert values == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert values[1] == BASE  # the first post-warm-up epoch runs at the full LR


def test_linear_warmup_over_three_epochs():
    E, W = 8, 3
    values = _lrs_per_epoch(_optim_cfg(MAX_EPOCH=E, WARMUP_EPOCH=W, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-6))
    expected = [1e-6, BASE * 1 / W, BASE * 2 / W] + [cosine(k - W, E) for k in range(W, E)]
    assert values == pytest.approx(expected, rel=1e-12)


def test_no_warmup_is_plain_cosine():
    E = 6
    values = _lrs_per_epoch(_optim_cfg(MAX_EPOCH=E, WARMUP_EPOCH=-1))
    assert values == pytest.approx([cosine(k, E) for k in range(E)], rel=1e-12)


def test_no_recount_anchors_the_successor_at_the_warmup_end():
    E, W = 8, 2
    values = _lrs_per_epoch(_optim_cfg(MAX_EPOCH=E, WARMUP_EPOCH=W, WARMUP_TYPE="constant", WARMUP_RECOUNT=False))
    anchor = 1 + math.cos(math.pi * W / E)
    expected = [1e-5] * W + [BASE * (1 + math.cos(math.pi * k / E)) / anchor for k in range(W, E)]
    assert values == pytest.approx(expected, rel=1e-12)


def test_step_schedules():
    single = _lrs_per_epoch(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5, MAX_EPOCH=5))
    assert single == pytest.approx([BASE, BASE, BASE / 2, BASE / 2, BASE / 4])
    multi = _lrs_per_epoch(_optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=(1, 3), GAMMA=0.1, MAX_EPOCH=4))
    assert multi == pytest.approx([BASE, BASE * 0.1, BASE * 0.1, BASE * 0.01])


def test_builds_on_current_torch_without_type_error():
    # Dassl's warm-up scheduler raises TypeError at construction on torch >= 2.7.
    param = nn.Parameter(torch.zeros(1))
    cfg = _optim_cfg(MAX_EPOCH=3, WARMUP_EPOCH=1)
    build_lr_scheduler(build_optimizer([param], cfg), cfg)


def test_state_dict_is_plain_and_round_trips():
    cfg = _optim_cfg(MAX_EPOCH=10, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            sched.step()
    state = sched.state_dict()
    json.dumps(state)  # only plain values: no pickled objects
    assert isinstance(state["successor"], dict) and state["successor"]["kind"] == "cosine"

    opt2 = build_optimizer(nn.Linear(2, 2), cfg)
    sched2 = build_lr_scheduler(opt2, cfg)
    sched2.load_state_dict(json.loads(json.dumps(state)))
    assert sched2.last_epoch == 4
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert opt2.param_groups[0]["lr"] == pytest.approx(cosine(3, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched.step()
        sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
                                      ("radam", torch.optim.RAdam)])
def test_build_optimizer_uses_dassl_keys(name, cls):
    cfg = _optim_cfg(NAME=name, WEIGHT_DECAY=1e-3)
    opt = build_optimizer(nn.Linear(3, 2), cfg)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == BASE and opt.param_groups[0]["weight_decay"] == 1e-3
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == cfg.MOMENTUM


def test_param_groups_and_staged_lr():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(3, 3))
    model.add_module("head", nn.Linear(3, 2))
    cfg = _optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    opt = build_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([BASE * 0.1, BASE])
    groups = [{"params": list(model.head.parameters()), "lr": 0.5}]
    opt = build_optimizer(None, _optim_cfg(), param_groups=groups)
    assert opt.param_groups[0]["lr"] == 0.5


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match='Did you mean "adamw"'):
        build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME="adamww"))
    cfg = _optim_cfg(LR_SCHEDULER="cosin")
    with pytest.raises(ValueError, match='Did you mean "cosine"'):
        build_lr_scheduler(build_optimizer(nn.Linear(2, 2), cfg), cfg)
    cfg = _optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="constnt")
    with pytest.raises(ValueError, match='Did you mean "constant"'):
        build_lr_scheduler(build_optimizer(nn.Linear(2, 2), cfg), cfg)
