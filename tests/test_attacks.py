"""Attack invariants on a tiny CLIP classifier trained for a second on synthetic data (tests/tiny_classifier.py)."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ampt.attacks import (ATTACK_REGISTRY, CW, PGD, TPGD, AutoAttack, build_attack, ce_loss,
                          margin_loss, pgd_linf)
from tiny_classifier import CLIP_MEAN, synthetic, trained_classifier

# Every registered attack, a new one included; aa-rand (100 APGD iterations x 20 EOT samples, fixed by its
# version) is too slow on the ViT and has its own test on a linear model.
ALL_ATTACKS = sorted(set(ATTACK_REGISTRY.registered_names()) - {"aa-rand"})
# Cheap settings per attack for the invariant tests (AutoAttack is parameter-free;
# at eps 8 APGD-CE breaks this model quickly, so Square has almost nothing left to do).
SETTINGS = {"pgd": dict(eps=4, steps=10), "cw": dict(eps=4, steps=10),
            "tpgd": dict(eps=4, steps=10), "aa": dict(eps=8, num_classes=4),
            "aa-plus": dict(eps=8, num_classes=4), "aa-rand": dict(eps=8, num_classes=4),
            "aa-custom": dict(eps=8, num_classes=4, options="apgd-ce,apgd-t"),
            "apgd-ce": dict(eps=8, num_classes=4, steps=10), "apgd-dlr": dict(eps=8, num_classes=4, steps=10),
            "apgd-t": dict(eps=8, num_classes=4, steps=10), "fab-t": dict(eps=8, num_classes=4, steps=10),
            "square": dict(eps=8, num_classes=4, steps=200)}
N_AA = 16  # AutoAttack runs on the first images only


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a shared 2-core machine, intra-op threads spin and cost several times the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(one_thread):
    model = trained_classifier()
    images, labels = synthetic(128, seed=1)
    clean = accuracy(model, images, labels)
    assert clean >= 90, f"the tiny classifier did not train (clean accuracy {clean:.1f})"
    return model, images, labels, clean


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return (model(images).argmax(dim=1) == labels).float().mean().item() * 100


def make(name: str, model: nn.Module, seed: int = 0, **overrides) -> object:
    kwargs = {**SETTINGS[name], **overrides}
    return build_attack(name, model, kwargs.pop("eps"), seed=seed, **kwargs)


def batch(name: str, images: Tensor, labels: Tensor) -> tuple:
    return (images[:N_AA], labels[:N_AA]) if "num_classes" in SETTINGS[name] else (images, labels)


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_invariants(setup, name, caplog):
    model, images, labels = setup[0], *batch(name, *setup[1:3])
    clean = accuracy(model, images, labels)
    attack = make(name, model)
    eps = attack.eps / 255

    model.train()
    model.clip.transformer.eval()  # a submodule deliberately kept in another mode
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, _: seen.append((m.training, torch.is_grad_enabled(),
                                  any(p.requires_grad for p in m.parameters()))))
    rng_before = torch.get_rng_state()
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING):
            adv = attack(images, labels)
            again = make(name, model)(images, labels)
    finally:
        hook.remove()

    assert adv.shape == images.shape and not adv.requires_grad
    assert (adv - images).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    assert torch.equal(adv, again), "the same seed must give the same images"
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG was touched"
    # Eval mode, frozen parameters and enable_grad while attacking; all restored after.
    assert seen and all(not training and not grad_params for training, _, grad_params in seen)
    assert any(grad_enabled for _, grad_enabled, _ in seen)
    assert model.training and model.clip.visual.training and not model.clip.transformer.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters()), "an attack left parameter gradients"
    model.eval()

    robust = accuracy(model, adv, labels)
    assert robust <= clean
    if name in ("pgd", "cw", "aa", "aa-plus", "aa-rand", "aa-custom", "apgd-ce", "square"):
        assert robust < clean, f"{name} at eps {attack.eps:g} changed nothing"
    assert "target classes" not in caplog.text  # AutoAttack's warning when C - 1 < 9 targets


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_eps_zero_is_clean(setup, name):
    model, images, labels = setup[0], *batch(name, *setup[1:3])
    adv = make(name, model, eps=0)(images, labels)
    assert torch.equal(adv, images)
    assert accuracy(model, adv, labels) == accuracy(model, images, labels)


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_fractional_eps_refused(setup, name):
    with pytest.raises(ValueError, match="fraction"):
        make(name, setup[0], eps=4 / 255)


def test_normalized_pixels_refused(setup):
    model, images, labels, _ = setup
    normalized = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / 0.27
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(model, eps=4, steps=1)(normalized, labels)


def test_registry_and_defaults(setup):
    from ampt.errors import UserError

    model = setup[0]
    assert {"aa", "cw", "pgd", "tpgd"} <= set(ATTACK_REGISTRY.registered_names())
    with pytest.raises(KeyError, match='Did you mean "pgd"'):
        build_attack("pdg", model, 4)
    pgd = build_attack("pgd", model, 4)
    assert (type(pgd), pgd.eps, pgd.alpha, pgd.steps, pgd.seed) == (PGD, 4.0, 1.0, 100, 0)
    assert repr(pgd) == "PGD(eps=4/255, alpha=1/255, steps=100, seed=0, random_start=True)"
    assert isinstance(build_attack("cw", model, 1, alpha=0.25, steps=3), CW)
    assert "TPGD(eps=4/255" in repr(build_attack("tpgd", model, 4))
    with pytest.raises(UserError, match="attack aa takes no steps"):  # AutoAttack's versions fix their steps
        build_attack("aa", model, 4, steps=100, num_classes=4)
    aa = build_attack("aa", model, 4, num_classes=4)
    assert isinstance(aa, AutoAttack) and aa.library.startswith("pyautoattack ")
    assert "n_target_classes=3" in repr(aa)
    with pytest.raises(ValueError, match="num_classes"):
        build_attack("aa", model, 4)


def test_pgd_breaks_undefended_model(setup):
    model, images, labels, clean = setup
    robust = accuracy(model, PGD(model, eps=8, steps=10)(images, labels), labels)
    assert robust <= clean - 30, f"PGD eps 8: clean {clean:.1f} -> {robust:.1f}"


def test_more_pgd_steps_never_weaker(setup):
    model, images, labels, _ = setup
    acc = {1: [], 10: []}
    loss = {1: [], 10: []}
    for steps in (1, 10):
        for seed in (0, 1):
            adv = PGD(model, eps=2, alpha=0.5, steps=steps, seed=seed)(images, labels)
            acc[steps].append(accuracy(model, adv, labels))
            with torch.no_grad():
                loss[steps].append(F.cross_entropy(model(adv), labels).item())
    assert sum(acc[10]) <= sum(acc[1]) and sum(loss[10]) > sum(loss[1])
    assert sum(acc[10]) < sum(acc[1]), f"10 steps not stronger than 1: {acc}"


def test_pgd_matches_torchattacks(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, images, ours, theirs = setup[0], setup[1], [], []
    labels = setup[2]
    for seed in (0, 1):
        ours.append(accuracy(model, PGD(model, eps=4, alpha=1, steps=10, seed=seed)(images, labels), labels))
        torch.manual_seed(seed)
        reference = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=True)
        theirs.append(accuracy(model, reference(images, labels), labels))
    assert abs(sum(ours) / 2 - sum(theirs) / 2) <= 1.0, f"ours {ours}, torchattacks {theirs}"


def test_pgd_linf_reusable_by_trainers(setup):
    model, images, labels, _ = setup
    calls = []

    def forward(x: Tensor) -> Tensor:  # what a trainer passes: a closure over cached features
        calls.append(x.shape[0])
        return model(x)

    generator = torch.Generator().manual_seed(3)
    adv = pgd_linf(forward, images, labels, eps=4 / 255, alpha=1 / 255, steps=5, generator=generator)
    assert len(calls) == 5
    assert torch.equal(adv, PGD(model, eps=4, alpha=1, steps=5, seed=3)(images, labels))
    custom = pgd_linf(forward, images, labels, 4 / 255, 1 / 255, 5,
                      generator=torch.Generator().manual_seed(3), loss=ce_loss)
    assert torch.equal(custom, adv)
    assert torch.equal(pgd_linf(forward, images, labels, 0.0, 1 / 255, 5), images)
    with pytest.raises(ValueError, match="loss"):
        pgd_linf(forward, images, labels, 4 / 255, 1 / 255, 1, loss="dlr")


def test_margin_loss_and_tpgd_ignores_labels(setup):
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert margin_loss(logits, torch.tensor([0, 2])).item() == pytest.approx((2 - 3) + (5 + 1))
    model, images, labels, _ = setup
    tpgd = TPGD(model, eps=4, steps=3)
    assert torch.equal(tpgd(images, labels), tpgd(images, labels.roll(1)))


def test_mode_restored_on_exception(setup):
    model = setup[0]

    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    wrapper = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(wrapper, eps=4, steps=2)(setup[1][:4], setup[2][:4])
    assert wrapper.training and model.clip.visual.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_autoattack_targets_fewer_than_ten_classes(setup):
    model, images, labels, _ = setup
    attack = AutoAttack(model, eps=4, num_classes=4)
    adversary = attack._adversary(images.device)
    assert adversary.apgd_targeted.n_target_classes == 3 and adversary.fab.n_target_classes == 3
    # APGD-T with the library's 9 targets would index past the 4 logits; with 3 it runs.
    adversary.apgd_targeted.n_iter = 5
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        adv = adversary.apgd_targeted.perturb(images[:4], labels[:4])
    assert (adv - images[:4]).abs().max().item() <= 4 / 255 + 1e-6
    with pytest.raises(ValueError, match="at least 4 classes"):
        AutoAttack(model, eps=4, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=10"):
        AutoAttack(model, eps=8, num_classes=10)(images[:4], labels[:4])


def test_autoattack_resumes_from_state(setup, tmp_path, monkeypatch):
    model, images, labels = setup[0], setup[1][:N_AA], setup[2][:N_AA]
    first = AutoAttack(model, eps=8, num_classes=4, batch_size=8, state_path=tmp_path)(images, labels)
    assert len(list(tmp_path.glob("aa-*.pt"))) == 2  # one file per finished chunk

    def interrupted(*args, **kwargs):
        raise AssertionError("a finished chunk was attacked again")

    monkeypatch.setattr("pyautoattack.AutoAttack.run_standard_evaluation", interrupted)
    resumed = AutoAttack(model, eps=8, num_classes=4, batch_size=8, state_path=tmp_path)(images, labels)
    assert torch.equal(resumed, first)
    with pytest.raises(AssertionError, match="attacked again"):  # another seed is another state
        AutoAttack(model, eps=8, num_classes=4, seed=1, batch_size=8, state_path=tmp_path)(images, labels)


class NoisyLinear(nn.Module):
    """A linear classifier behind a declared random part (Gaussian input noise)."""

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        from ampt.models.parts import RandomPart

        self.noise = RandomPart(lambda x: (x + sigma * torch.randn_like(x)).clamp(0, 1), name="gaussian_noise")
        self.linear = nn.Linear(3 * 32 * 32, 4)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(4, 3 * 32 * 32, generator=torch.Generator().manual_seed(0)) * 0.05)
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.noise(x).flatten(1))


def test_aa_rand_runs_eot_twenty_and_is_seeded():
    model = NoisyLinear()
    images, _ = synthetic(8, seed=3)
    with torch.no_grad():
        labels = model.linear(images.flatten(1)).argmax(1)
    rng_before = torch.get_rng_state()
    attack = build_attack("aa-rand", model, 8, num_classes=4)
    adv = attack(images, labels)
    assert torch.equal(adv, build_attack("aa-rand", model, 8, num_classes=4)(images, labels))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert (adv - images).abs().max().item() <= 8 / 255 + 1e-6
    config = attack.config()
    assert (config["version"], config["attacks"], attack.eot_iter) == ("rand", ["apgd-ce", "apgd-dlr"], 20)
    assert config["settings"]["apgd-ce"]["eot_iter"] == 20


def test_attack_settings_are_declared_and_refused_in_one_line(setup):
    from ampt.errors import UserError

    model = setup[0]
    with pytest.raises(UserError, match="attack aa takes no restarts.*attacks that take them: .*apgd-ce.*pgd"):
        build_attack("aa", model, 4, num_classes=4, restarts=5)
    with pytest.raises(UserError, match="attack square takes no EOT"):
        build_attack("square", model, 4, num_classes=4, eot_iter=4)
    with pytest.raises(UserError, match="takes no alpha"):
        build_attack("apgd-ce", model, 4, num_classes=4, alpha=1.0)
    with pytest.raises(UserError, match="needs its attack list"):
        build_attack("aa-custom", model, 4, num_classes=4)
    with pytest.raises(UserError, match="unknown attack apgd-x; valid: apgd-ce"):
        build_attack("aa-custom", model, 4, num_classes=4, options="apgd-ce,apgd-x")
    custom = build_attack("aa-custom", model, 4, num_classes=4, options="apgd-ce, apgd-dlr")
    config = custom.config()
    assert config["attacks"] == ["apgd-ce", "apgd-dlr"] and config["settings"]["apgd-ce"]["n_restarts"] == 1
    square = build_attack("square", model, 4, num_classes=4)
    assert (square.steps, square.access, square.config()["settings"]["square"]["n_queries"]) == (5000, "black-box", 5000)
    apgd_t = build_attack("apgd-t", model, 4, num_classes=4, restarts=2)
    assert apgd_t.config()["settings"]["apgd-t"] == {"n_iter": 100, "n_restarts": 2, "eot_iter": 1, "n_target_classes": 3}


class CoinFlip(nn.Module):
    """Class 1 exactly when the first pixel is below 0.5: a uniform random start fools half the images."""

    def forward(self, x: Tensor) -> Tensor:
        first = x[:, 0, 0, 0]
        return torch.stack([torch.zeros_like(first), (0.5 - first) * 1000], dim=1)


def test_pgd_restarts_keep_first_run_and_only_add_fooled_images():
    model = CoinFlip()
    images, labels = torch.full((64, 3, 8, 8), 0.5), torch.zeros(64, dtype=torch.long)
    one = build_attack("pgd", model, 4, steps=0)(images, labels)
    five = build_attack("pgd", model, 4, steps=0, restarts=5)(images, labels)
    fooled_one = model(one).argmax(1) != labels
    fooled_five = model(five).argmax(1) != labels
    assert torch.equal(five[fooled_one], one[fooled_one]), "restart 0 must be the one-run attack"
    assert 20 <= int(fooled_one.sum()) <= 44, int(fooled_one.sum())
    assert bool(fooled_five[fooled_one].all()) and int(fooled_five.sum()) >= 58, int(fooled_five.sum())
    assert torch.equal(five, build_attack("pgd", model, 4, steps=0, restarts=5)(images, labels))


def test_eot_sums_the_gradients_of_several_draws_per_step():
    model = NoisyLinear(sigma=0.2)
    images, _ = synthetic(16, seed=4)
    with torch.no_grad():
        labels = model.linear(images.flatten(1)).argmax(1)
    calls = []
    hook = model.noise.register_forward_hook(lambda *_: calls.append(1))
    try:
        plain = build_attack("pgd", model, 4, steps=5)(images, labels)
        n_plain = len(calls)
        eot = build_attack("pgd", model, 4, steps=5, eot_iter=8)(images, labels)
    finally:
        hook.remove()
    assert (n_plain, len(calls) - n_plain) == (5, 40)
    assert not torch.equal(eot, plain) and (eot - images).abs().max().item() <= 4 / 255 + 1e-6
    attack = build_attack("pgd", model, 4, steps=5, eot_iter=8)
    assert (attack.config()["eot_iter"], attack.hparams()["eot_iter"]) == (8, 8)


def test_bpda_goes_through_a_declared_quantizer(setup):
    from ampt.models.parts import NonDifferentiable, declared_parts

    base = setup[0]

    class Quantized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quantizer = NonDifferentiable(lambda x: torch.round(x * 7) / 7, name="3-bit input")
            self.base = base

        def forward(self, x: Tensor) -> Tensor:
            return self.base(self.quantizer(x))

    model = Quantized()
    images, labels = setup[1], setup[2]
    assert declared_parts(model) == [{"path": "quantizer", "kind": "non_differentiable",
                                      "module": "NonDifferentiable", "name": "3-bit input", "backward": "identity"}]
    blind = build_attack("pgd", model, 4, steps=5)(images, labels)
    assert torch.equal(blind.sub(images).abs().gt(4.5 / 255).sum(), torch.tensor(0))
    with torch.no_grad():
        blind_acc = accuracy(model, blind, labels)
        bpda_acc = accuracy(model, build_attack("pgd", model, 4, steps=5, bpda=True)(images, labels), labels)
    assert bpda_acc < blind_acc - 20, (bpda_acc, blind_acc)
    assert model.quantizer.straight_through is False
