"""DEFEAT's PerturbShield and the prompted CLIP around it (Chen et al., ICLR 2026).

DEFEAT (cheny02/DEFEAT-ICLR2026, Apache-2.0; ``trainers/defeat.py``) adds to
APT's 16-token CoOp prompt a second image branch on the image tower's patch
(grid) features:

- :func:`image_and_patch_features`: one pass of a ViT tower giving CLIP's
  global feature ``ln_post(cls) @ proj`` and the patch features
  ``ln_post(patch_i) @ proj`` ``[B, L, D]`` (DEFEAT's ``VisionTransformer_DEFEAT``),
  for the ``clip`` package's ViT and open_clip's ViT; a tower without patch
  features (a ResNet) is refused in one line by :func:`check_patch_features`.
- :class:`PatchVQVAE`: the patch features as a ``[B, D, h, w]`` map through a
  conv encoder, a nearest-code lookup in a learned codebook
  (:class:`CodebookQuantizer`, declared a non-differentiable part whose
  gradient is the straight-through estimator) and a conv decoder back to D
  channels.
- :class:`PatchProjection`: a learned ``Linear(L, 1)`` over the patch axis of
  the reconstruction, giving one ``[B, D]`` feature.
- :class:`DefeatCLIP`: logits ``alpha * global + (1 - alpha) * shield`` (each
  CLIP's scaled cosine with the prompt's text features).

The written form follows DEFEAT's module for module; sizes that DEFEAT fixes
for ViT-B/32 (512 channels, a 7 x 7 grid) are read from the tower here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import UserError
from .exported import load_learned_tensors
from .parts import NonDifferentiable
from .prompted_clip import PromptedCLIP, l2_normalize
from .prompt_learner import PromptLearner


# ---------------------------------------------------------------- patch features of the image tower
def _is_clip_vit(visual: nn.Module) -> bool:
    return all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding", "ln_pre",
                                             "transformer", "ln_post", "proj")) and not hasattr(visual, "_embeds")


def _is_open_clip_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "_embeds") and hasattr(visual, "ln_post") and hasattr(visual, "transformer")


def check_patch_features(visual: nn.Module, method: str = "DEFEAT") -> None:
    """One line (:class:`UserError`) when ``visual`` has no patch features this module can read."""
    name = type(visual).__name__
    if _is_clip_vit(visual):
        return
    if _is_open_clip_vit(visual):
        pooled_by_token = (getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", "tok") == "tok"
                           and not getattr(visual, "final_ln_after_pool", False))
        if pooled_by_token:
            return
        raise UserError(f"{method} needs the image tower's patch features after ln_post and the projection; the "
                        f"open_clip tower {name} pools with an attention pool or pool_type "
                        f"{getattr(visual, 'pool_type', '?')!r}: use a ViT that pools its class token")
    raise UserError(f"{method} needs the image tower's patch (grid) features; {name} (e.g. a ResNet tower) has none: "
                    "use a ViT backbone (e.g. MODEL.BACKBONE.NAME ViT-B/32)")


def patch_grid(visual: nn.Module) -> Tuple[int, int]:
    """(h, w) of the tower's patch grid at its input resolution."""
    check_patch_features(visual)
    if _is_clip_vit(visual):
        k = visual.conv1.kernel_size
        side = int(visual.input_resolution)
        return side // k[0], side // k[1]
    grid = visual.grid_size
    return int(grid[0]), int(grid[1])


def image_and_patch_features(visual: nn.Module, pixels: Tensor) -> Tuple[Tensor, Tensor]:
    """``(global [B, D], patches [B, L, D])`` of normalized pixels, in one pass of a ViT tower.

    Global: the tower's own output (``ln_post`` of the class token, then
    ``proj``); patches: ``ln_post`` of each patch token, then ``proj``
    (DEFEAT's ``x_local``), in row-major grid order.
    """
    if _is_clip_vit(visual):
        x = visual.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                                 device=x.device)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        x = visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        tokens_global, tokens = visual.ln_post(x[:, 0, :]), visual.ln_post(x[:, 1:, :])
    else:
        check_patch_features(visual)
        x = visual.transformer(visual._embeds(pixels))
        x = visual.ln_post(x)
        tokens_global, tokens = x[:, 0], x[:, 1:]
    if visual.proj is not None:
        tokens_global, tokens = tokens_global @ visual.proj, tokens @ visual.proj
    return tokens_global, tokens


# ---------------------------------------------------------------- the VQ-VAE over the patch map
class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (DEFEAT's ResidualBlock)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class CodebookQuantizer(NonDifferentiable):
    """Nearest code of each position of ``ze [N, C, h, w]``, declared non-differentiable.

    The code is picked by squared distance to the codebook's (detached)
    rows. Its value goes on as ``ze + (zq - ze).detach()``: DEFEAT's own
    forward is already the straight-through estimator, so the gradient of
    the model as written (what DEFEAT's PGD attacks, and what it trains with)
    is the identity through this part, which is also the declared BPDA
    backward: with or without ``--bpda`` an attack gets the same gradient,
    and records say so (``forward_is_straight_through`` in :meth:`describe`).
    :meth:`codes` gives ``zq`` with gradient to the codebook (the VQ losses).
    """

    def __init__(self, n_codes: int, dim: int) -> None:
        super().__init__(self._straight_through_codes, backward="identity", name="VQ codebook (nearest code)",
                         forward_is_straight_through=True)
        self.codebook = nn.Embedding(n_codes, dim)
        self.codebook.weight.data.uniform_(-1.0 / n_codes, 1.0 / n_codes)

    def codes(self, ze: Tensor) -> Tensor:
        """``zq [N, C, h, w]``: each position's nearest codebook row (gradient to the codebook only)."""
        embedding = self.codebook.weight.data
        n, c, h, w = ze.shape
        k = embedding.shape[0]
        distance = torch.sum((embedding.reshape(1, k, c, 1, 1) - ze.reshape(n, 1, c, h, w)) ** 2, 2)
        return self.codebook(torch.argmin(distance, 1)).permute(0, 3, 1, 2)

    def _straight_through_codes(self, ze: Tensor) -> Tensor:
        return self.quantize(ze)[0]

    def quantize(self, ze: Tensor) -> Tuple[Tensor, Tensor]:
        """``(ze + (zq - ze).detach(), zq)``: the decoder's input and the codes."""
        zq = self.codes(ze)
        return ze + (zq - ze).detach(), zq

    def forward(self, ze: Tensor) -> Tensor:
        """The decoder's input; the same with or without BPDA (the declared backward is already the forward's)."""
        return self.quantize(ze)[0]


@dataclass
class ShieldOutputs:
    """The PerturbShield's tensors of one forward (for the VQ-VAE loss terms)."""

    patches: Tensor  # [B, D, h, w] the tower's patch features as a map (the VQ-VAE's input)
    reconstruction: Tensor  # [B, D, h, w] x_hat
    ze: Tensor  # [B, C, h, w] encoder output
    zq: Tensor  # [B, C, h, w] nearest codes (gradient to the codebook)
    projected: Tensor  # [B, D] the projection's output, unnormalized


class PatchVQVAE(nn.Module):
    """DEFEAT's VQVAE_NET: conv encoder, codebook, conv decoder; ``dim`` hidden channels, ``n_codes`` codes."""

    def __init__(self, input_dim: int, dim: int = 256, n_codes: int = 512) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(input_dim, dim, 3, 1, 1), nn.ReLU(), nn.Conv2d(dim, dim, 3, 1, 1),
                                     ResidualBlock(dim))
        self.quantizer = CodebookQuantizer(n_codes, dim)
        self.decoder = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), ResidualBlock(dim),
                                     nn.ConvTranspose2d(dim, input_dim, 3, 1, 1))

    def forward(self, patch_map: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(x_hat, ze, zq)`` of a ``[B, D, h, w]`` map."""
        ze = self.encoder(patch_map)
        decoder_input, zq = self.quantizer.quantize(ze)
        return self.decoder(decoder_input), ze, zq


class PatchProjection(nn.Module):
    """``Linear(L, 1)`` over the patch axis: ``[B, L, D] -> [B, D]`` (DEFEAT's LinearProjection)."""

    def __init__(self, n_patches: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_patches, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.permute(0, 2, 1)).squeeze(-1)


class PerturbShield(nn.Module):
    """Patch features -> VQ-VAE -> projection: one ``[B, D]`` feature per image."""

    def __init__(self, embed_dim: int, grid: Tuple[int, int], dim: int = 256, n_codes: int = 512) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.projection = PatchProjection(self.grid[0] * self.grid[1])  # built first, as DEFEAT's CustomCLIP
        self.vqvae = PatchVQVAE(embed_dim, dim, n_codes)

    def forward(self, patches: Tensor) -> ShieldOutputs:
        b, n, d = patches.shape
        patch_map = patches.permute(0, 2, 1).reshape(b, d, *self.grid)
        x_hat, ze, zq = self.vqvae(patch_map)
        projected = self.projection(x_hat.reshape(b, d, -1).permute(0, 2, 1))
        return ShieldOutputs(patch_map, x_hat, ze, zq, projected)


# ---------------------------------------------------------------- the model
class _LatestForward:
    """The latest ``encode_image`` call's (features, shield tensors); copies and pickles start empty."""

    def __init__(self) -> None:
        self.value: Optional[Tuple[Tensor, ShieldOutputs]] = None

    def __deepcopy__(self, memo) -> "_LatestForward":
        return _LatestForward()

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.value = None


class DefeatCLIP(PromptedCLIP):
    """APT's prompted CLIP plus the PerturbShield branch; logits fuse both (``alpha`` on the global one).

    ``encode_image`` returns ``[B, 2D]``: the normalized global feature, then
    the normalized shield feature; :meth:`combine` splits them.
    :meth:`shield_outputs` gives the VQ-VAE tensors of the latest
    ``encode_image`` call, asked for by the features it returned.
    """

    def __init__(self, clip_model: nn.Module, prompt_learner: Optional[PromptLearner], alpha: float = 0.5,
                 vq_dim: int = 256, vq_codes: int = 512, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(clip_model, prompt_learner, dtype=dtype)
        check_patch_features(self.image_encoder)
        embed_dim = int(clip_model.text_projection.shape[1])
        self.perturb_shield = PerturbShield(embed_dim, patch_grid(self.image_encoder), vq_dim, vq_codes)
        self.alpha = float(alpha)
        self._latest = _LatestForward()

    def image_features_and_shield(self, x: Tensor) -> Tuple[Tensor, Tensor, ShieldOutputs]:
        """(normalized global ``[B, D]``, normalized shield ``[B, D]``, the shield's tensors)."""
        pixels = self.normalizer(x).type(self.dtype)
        global_features, patches = image_and_patch_features(self.image_encoder, pixels)
        shield = self.perturb_shield(patches.float())
        return l2_normalize(global_features.float()), l2_normalize(shield.projected), shield

    def encode_image(self, x: Tensor) -> Tensor:
        global_features, shield_features, outputs = self.image_features_and_shield(x)
        features = torch.cat([global_features, shield_features], dim=1)
        self._latest.value = (features, outputs)  # a loss term asks by the features it was given
        return features

    def latest_outputs(self) -> Dict[str, object]:
        latest = self._latest.value
        return {} if latest is None else {"shield": latest[1]}

    def shield_outputs(self, features: Tensor) -> ShieldOutputs:
        """The shield's tensors of the latest ``encode_image`` call, which must have returned ``features``."""
        latest = self._latest.value
        if latest is None or latest[0] is not features:
            raise RuntimeError("shield_outputs: these features are not the latest encode_image call's")
        return latest[1]

    @staticmethod
    def split(features: Tensor) -> Tuple[Tensor, Tensor]:
        """(global, shield) halves of :meth:`encode_image`'s ``[B, 2D]``."""
        d = features.shape[1] // 2
        return features[:, :d], features[:, d:]

    def combine(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        global_features, shield_features = self.split(image_features)
        logits = super().combine(global_features, text_features)
        logits_shield = super().combine(shield_features, text_features)
        return self.alpha * logits + (1 - self.alpha) * logits_shield

    def model_features(self) -> FrozenSet[str]:
        return frozenset({"frozen_zero_shot", "learned_image_features", "perturb_shield"})

    export_modules = ("prompt_learner", "perturb_shield")
    export_graph_note = ("its PerturbShield branch (patch features, VQ-VAE with a nearest-code lookup) is not "
                         "exported; the ONNX export covers the fixed-prompt and AMPT heads")

    def export_settings(self) -> Dict[str, Any]:
        codebook = self.perturb_shield.vqvae.quantizer.codebook
        return {"prompt": self.prompt_learner.settings(), "alpha": self.alpha, "vq_dim": codebook.embedding_dim,
                "vq_codes": codebook.num_embeddings}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, Tensor]) -> "DefeatCLIP":
        learner = PromptLearner(clip_model, classnames, **settings["prompt"])
        model = cls(clip_model, learner, alpha=settings["alpha"], vq_dim=settings["vq_dim"],
                    vq_codes=settings["vq_codes"])
        load_learned_tensors(model, cls.export_modules, tensors)
        return model
