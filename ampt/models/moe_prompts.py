"""Mixture-of-experts deep prompts (MoEAdvVLP): K expert prompt sets per prompted block, mixed by a gate.

Layout as :mod:`ampt.models.deep_prompt_learner` (independent V-L deep
prompts, IVLP): block 0 of each tower reads one learned prompt (the text
``ctx``, the image tokens appended after the positional embedding). Each
deeper prompted block j = 1..J-1 holds K expert prompts ``E_j [K, n, d]``
and a gate ``Linear_j(d, K)``; at the input of block j the gate reads the
block's input tokens other than the prompt positions and gives weights
``w [N, K]`` (N = images on the image side, class prompts on the text side),
and the block's prompt is ``sum_k w_k E_j[k]`` (xinwong/MMoP ``clip/model.py``,
``ResidualAttentionBlock_VPT_MoE`` / ``ResidualAttentionBlock_MaPLe_MoE``).

``maple`` coupling (``MoEAdvMaPLe`` of the MAPT repository, MMoP's
``ResidualAttentionBlock_MaPLe_MoE``): block 0's image tokens are
``Linear(text ctx)``, as MaPLe's; the deeper blocks' experts and gates are
each tower's own. MMoP's block inserts MaPLe's coupled deep prompts and then
overwrites them with the experts' mixture, so only block 0 stays coupled,
as here.

Gate modes (``GATE``):

- ``token_softmax``: ``mean_t softmax(Linear(x_t))`` over the tokens (MMoP's
  VPT and MaPLe MoE blocks);
- ``token_mean``: ``softmax(Linear(mean_t ln_1(x_t)))`` (MMoP's later
  ``ResidualAttentionBlock_IVLP_MoE`` routing, without its anchoring);
- ``anchored``: MMoP's ``ResidualAttentionBlock_IVLP_MoE`` in full
  (:class:`AnchoredPromptGate`): routing logits from ``ln_1`` of the CLS
  token, of the token mean, or a mix of the two (``hybrid``), a learned
  temperature ``tau`` and a learned base prompt ``b`` (initialised to the
  experts' mean), the block's prompt being ``b + alpha (sum_k w_k E_j[k] - b)``
  with a learned ``alpha``; ``tau`` and ``alpha`` are ``softplus`` of a
  parameter, clamped to their ranges.

Cost: the experts are mixed in token space before each block, so one pass of
each tower per forward (not K); the gates add ``N x L x d x K`` multiply-adds
per prompted block. The text side depends only on the parameters and the
class names, so it is computed once per step and reused by the attack.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .deep_prompt_learner import DeepTextLayout, first_text_prompt, normal_prompt, prompted_vit_input
from .exported import load_learned_tensors
from .parts import RouterPart
from .prompted_clip import PromptedCLIP, l2_normalize
from ..errors import UserError

GATE_MODES = ("token_softmax", "token_mean", "anchored")
ROUTINGS = ("cls", "token_mean", "hybrid")
MOE_COUPLINGS = ("independent", "maple")


class PromptGate(RouterPart):
    """``forward(tokens [N, L, d], mask [N, L] or None, ln) -> weights [N, K]`` (rows on the simplex), fp32.

    A declared router part (:mod:`ampt.models.parts`): attacks go through it by autograd, and records say so.
    """

    def __init__(self, width: int, n_experts: int, mode: str = "token_softmax") -> None:
        super().__init__()
        if mode not in GATE_MODES:
            raise UserError(f'Unknown gate mode "{mode}"; valid: {", ".join(GATE_MODES)}')
        self.mode = mode
        self.linear = nn.Linear(width, n_experts)  # PyTorch's default init, as MMoP's nn.Linear gate

    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None,
                ln: Optional[nn.Module] = None) -> torch.Tensor:
        weight = None if mask is None else mask.to(torch.float32).unsqueeze(-1)
        count = tokens.shape[1] if mask is None else weight.sum(dim=1).clamp_min(1.0)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return (values.sum(dim=1) if weight is None else (values * weight).sum(dim=1)) / count

        if self.mode == "token_softmax":
            return mean(F.softmax(self.linear(tokens.float()), dim=-1))
        h = ln(tokens).float() if ln is not None else tokens.float()
        return F.softmax(self.linear(mean(h)), dim=-1)

    def mix(self, tokens: torch.Tensor, mask: Optional[torch.Tensor], ln: Optional[nn.Module],
            experts: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """(weights ``[N, K]``, the block's prompt ``[N, n, d]`` = ``sum_k w_k experts[k]``)."""
        weights = self(tokens, mask, ln)
        return weights, _mix(weights, experts, dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


@dataclass(frozen=True)
class AnchorSettings:
    """MMoP's ``ResidualAttentionBlock_IVLP_MoE`` settings (its ViT-B/32 config's values as defaults)."""

    routing: str = "token_mean"
    hybrid_lambda: float = 0.7
    alpha_init: float = 1.0
    alpha_range: Tuple[float, float] = (0.0, 2.0)
    tau_range: Tuple[float, float] = (0.7, 1.3)

    def check(self) -> None:
        if self.routing not in ROUTINGS:
            raise UserError(f'Unknown anchored-gate routing "{self.routing}"; valid: {", ".join(ROUTINGS)}')
        for name, (low, high) in (("alpha", self.alpha_range), ("tau", self.tau_range)):
            if not 0 <= low <= high:
                raise UserError(f"The anchored gate's {name} range must be 0 <= min <= max (got {low}, {high})")
        if self.tau_range[1] <= 0:
            raise UserError(f"The anchored gate's tau range must allow tau > 0 (got {self.tau_range})")


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(max(float(value), 1e-6)))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class AnchoredPromptGate(RouterPart):
    """MMoP's anchored residual gate: ``prompt = b + alpha (sum_k w_k E[k] - b)``, ``w = softmax(logits / tau)``."""

    mode = "anchored"

    def __init__(self, width: int, n_experts: int, base_init: torch.Tensor, settings: AnchorSettings) -> None:
        super().__init__()
        settings.check()
        self.settings = settings
        self.linear = nn.Linear(width, n_experts)
        self.base = nn.Parameter(base_init.detach().clone())
        tau0 = _clamp(1.0, *settings.tau_range)
        alpha0 = _clamp(max(settings.alpha_init, settings.alpha_range[0], 1e-6), *settings.alpha_range)
        self.tau = nn.Parameter(torch.full((1,), _inverse_softplus(tau0)))
        self.alpha = nn.Parameter(torch.full((1,), _inverse_softplus(alpha0)))

    @staticmethod
    def bounded(raw: torch.Tensor, bounds: Tuple[float, float]) -> torch.Tensor:
        return F.softplus(raw.float()).clamp(min=bounds[0], max=bounds[1])

    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None,
                ln: Optional[nn.Module] = None) -> torch.Tensor:
        h = (ln(tokens) if ln is not None else tokens).float()
        routing = self.settings.routing
        logits = self.linear(h[:, 0]) if routing in ("cls", "hybrid") else None
        if routing != "cls":
            if mask is None:
                mean = h.mean(dim=1)
            else:
                weight = mask.to(torch.float32).unsqueeze(-1)
                mean = (h * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
            token_mean = self.linear(mean)
            lam = _clamp(float(self.settings.hybrid_lambda), 0.0, 1.0)
            logits = token_mean if logits is None else lam * logits + (1.0 - lam) * token_mean
        return F.softmax(logits / self.bounded(self.tau, self.settings.tau_range), dim=-1)

    def mix(self, tokens: torch.Tensor, mask: Optional[torch.Tensor], ln: Optional[nn.Module],
            experts: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        weights = self(tokens, mask, ln)
        base = self.base.float()
        mixed = torch.einsum("bk,knd->bnd", weights, experts.float())
        alpha = self.bounded(self.alpha, self.settings.alpha_range)
        return weights, (base + alpha * (mixed - base)).to(dtype)

    def extra_repr(self) -> str:
        return f"mode=anchored, routing={self.settings.routing}"


class MoEDeepPromptLearner(nn.Module):
    """Block-0 prompts of both towers, and K experts plus a gate at each deeper prompted block.

    ``depth_text`` / ``depth_vision`` count the prompted blocks (block 0
    included); a tower with depth 0 (or 0 tokens) has no prompt at all.
    """

    n_prompts = 1

    def __init__(self, text_width: int, vision_width: int, n_experts: int, n_ctx_text: int, n_ctx_vision: int,
                 depth_text: int, depth_vision: int, gate: str = "token_softmax",
                 ctx_init: Optional[torch.Tensor] = None, coupling: str = "independent",
                 anchor: Optional[AnchorSettings] = None) -> None:
        super().__init__()
        if gate not in GATE_MODES:
            raise UserError(f'Unknown gate mode "{gate}"; valid: {", ".join(GATE_MODES)}')
        if coupling not in MOE_COUPLINGS:
            raise UserError(f'Unknown MoE prompt coupling "{coupling}"; valid: {", ".join(MOE_COUPLINGS)}')
        if coupling == "maple" and (n_ctx_text != n_ctx_vision or depth_text != depth_vision or not n_ctx_text
                                    or not depth_text):
            raise UserError("maple coupling needs the same token count (>= 1) and depth (>= 1) in both towers "
                            f"(got tokens {n_ctx_text}/{n_ctx_vision}, depths {depth_text}/{depth_vision})")
        if n_experts < 1:
            raise UserError(f"A mixture of prompt experts needs at least 1 expert (got {n_experts})")
        self.n_experts = n_experts
        self.gate = gate
        self.anchor = anchor or AnchorSettings()
        self.depth_text = depth_text if n_ctx_text else 0
        self.depth_vision = depth_vision if n_ctx_vision else 0
        if max(self.depth_text, self.depth_vision) < 2:
            raise UserError("A prompt gate needs deep prompts: PROMPT_DEPTH_TEXT or PROMPT_DEPTH_VISION >= 2 "
                            f"with tokens (got text {n_ctx_text} x {depth_text}, image {n_ctx_vision} x {depth_vision})")
        self.n_ctx_text, self.n_ctx_vision = n_ctx_text, n_ctx_vision
        self.ctx = first_text_prompt(self.depth_text, n_ctx_text, text_width, ctx_init)
        self.coupling = coupling
        # block 0's image tokens: learned (independent) or Linear(text ctx) (maple, MaPLe's shallow coupling)
        self.vision = nn.ParameterList(
            [normal_prompt(n_ctx_vision, vision_width)] if self.depth_vision and coupling == "independent" else [])
        self.to_vision = nn.Linear(text_width, vision_width) if coupling == "maple" else None

        def make_gate(width: int, experts: torch.Tensor) -> nn.Module:
            if gate == "anchored":
                return AnchoredPromptGate(width, n_experts, experts.mean(dim=0), anchor or AnchorSettings())
            return PromptGate(width, n_experts, gate)

        # draw order (text experts, text gates, image experts, image gates) kept: seeds give the same start
        self.text_experts = nn.ParameterList(
            [normal_prompt(n_experts, n_ctx_text, text_width) for _ in range(max(self.depth_text - 1, 0))])
        self.text_gates = nn.ModuleList([make_gate(text_width, e) for e in self.text_experts])
        self.vision_experts = nn.ParameterList(
            [normal_prompt(n_experts, n_ctx_vision, vision_width) for _ in range(max(self.depth_vision - 1, 0))])
        self.vision_gates = nn.ModuleList([make_gate(vision_width, e) for e in self.vision_experts])

    def settings(self) -> Dict[str, Any]:
        """The constructor arguments besides the tower widths and the initial context."""
        return {"n_experts": self.n_experts, "n_ctx_text": self.n_ctx_text, "n_ctx_vision": self.n_ctx_vision,
                "depth_text": self.depth_text, "depth_vision": self.depth_vision, "gate": self.gate,
                "coupling": self.coupling, "anchor": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in asdict(self.anchor).items()}}

    def first_vision_tokens(self) -> torch.Tensor:
        """``[n, d_v]``: block 0's image tokens."""
        return self.to_vision(self.ctx) if self.coupling == "maple" else self.vision[0]

    def extra_repr(self) -> str:
        return (f"coupling={self.coupling}, experts={self.n_experts}, text: {self.n_ctx_text} tokens x {self.depth_text} blocks, "
                f"image: {self.n_ctx_vision} tokens x {self.depth_vision} blocks")


def _mix(weights: torch.Tensor, experts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[N, n, d]``: per row, ``sum_k weights[:, k] experts[k]``."""
    return torch.einsum("bk,knd->bnd", weights, experts.float()).to(dtype)


class MoEDeepPromptCLIP(PromptedCLIP):
    """A :class:`PromptedCLIP` whose deep prompts are gated mixtures of experts (one text prompt, K = 1).

    ``gate_weights()`` gives the image gates' weights of the latest
    ``encode_image`` (``[B, K]`` per gated block, with gradient) and
    ``router_weights()`` their mean over blocks; ``text_gate_weights`` holds
    the text gates' ``[C, K]`` of the latest ``text_features``, detached.
    """

    def __init__(self, clip_model: nn.Module, learner: MoEDeepPromptLearner, layout: DeepTextLayout,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(clip_model, prompt_learner=None, dtype=dtype)
        self.prompt_learner = learner
        self.text_layout = layout
        self._vision_weights: List[torch.Tensor] = []
        self._text_weights: List[torch.Tensor] = []
        self.snapshot: List[torch.Tensor] = []

    # ------------------------------------------------------------ text
    def text_features(self) -> torch.Tensor:
        """Normalized ``[1, C, D]`` features; each class prompt's deeper tokens mixed by its own gate weights."""
        learner, encoder = self.prompt_learner, self.text_encoder
        tower = encoder.tower
        embeddings, token_ids = self.text_layout.embeddings(learner.ctx)
        dtype = encoder.dtype
        pooled = tower.pool_index(token_ids)
        length = tower.kept_length(token_ids)
        x = embeddings[:, :length].type(dtype) + encoder.positional_embedding[:length].type(dtype)
        mask = None if encoder.causal_mask is None else encoder.causal_mask[:length, :length].to(dtype)
        n = learner.n_ctx_text if learner.depth_text else 0
        # the gate reads each prompt's own tokens up to its pooled (EOT) token, prompt positions excluded
        positions = torch.arange(length, device=x.device)
        own = (positions[None, :] <= pooled[:, None]) & ~((positions >= 1) & (positions <= n))[None, :]
        weights_log = []
        *blocks, last = encoder.transformer.resblocks
        for index, block in enumerate([*blocks, last]):
            if 1 <= index < learner.depth_text:
                w, prompt = learner.text_gates[index - 1].mix(x, own, getattr(block, "ln_1", None),
                                                              learner.text_experts[index - 1], x.dtype)
                weights_log.append(w)
                x = torch.cat([x[:, :1], prompt, x[:, 1 + n:]], dim=1)
            if index < len(blocks):
                x = tower.run_block(block, x, mask)
        features = tower.project(tower.run_block_at(last, x, pooled)).float()
        self._text_weights = weights_log
        return l2_normalize(features).unsqueeze(0)

    @property
    def text_gate_weights(self) -> List[torch.Tensor]:
        """The text gates' ``[C, K]`` weights of the latest ``text_features``, detached."""
        return [w.detach() for w in self._text_weights]

    # ------------------------------------------------------------ image
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        learner, visual = self.prompt_learner, self.image_encoder
        pixels = self.normalizer(x).type(self.dtype)
        self._vision_weights = []
        if not learner.depth_vision:
            return l2_normalize(visual(pixels).float())
        n = learner.n_ctx_vision
        h = prompted_vit_input(visual, pixels, learner.first_vision_tokens())
        for index, block in enumerate(visual.transformer.resblocks):
            if 1 <= index < learner.depth_vision:
                tokens = h[: h.shape[0] - n].permute(1, 0, 2)  # [B, L, d], the previous prompt outputs dropped
                w, prompt = learner.vision_gates[index - 1].mix(tokens, None, getattr(block, "ln_1", None),
                                                                learner.vision_experts[index - 1], h.dtype)
                self._vision_weights.append(w)
                h = torch.cat([h[: h.shape[0] - n], prompt.permute(1, 0, 2)], dim=0)
            h = block(h)
        h = visual.ln_post(h.permute(1, 0, 2)[:, 0, :])
        features = h @ visual.proj if visual.proj is not None else h
        return l2_normalize(features.float())

    # ------------------------------------------------------------ interface
    def gate_weights(self) -> List[torch.Tensor]:
        return list(self._vision_weights)

    def router_weights(self) -> Optional[torch.Tensor]:
        """Mean over the gated image blocks of their weights ``[B, K]`` (None before a forward)."""
        if not self._vision_weights:
            return None
        self.snapshot = [w.detach() for w in self._vision_weights]
        return torch.stack(self._vision_weights).mean(dim=0)

    @property
    def last_weights(self) -> Optional[torch.Tensor]:
        weights = self.router_weights()
        return None if weights is None else weights.detach()

    def latest_outputs(self) -> Dict[str, object]:
        """``image_gates``: the image gates' ``[B, K]`` of the latest ``encode_image``; ``text_gates``: the text
        gates' ``[C, K]`` of the latest ``text_features`` (both with gradient)."""
        return {"image_gates": list(self._vision_weights), "text_gates": list(self._text_weights)}

    def expert_banks(self) -> List[torch.Tensor]:
        """The expert prompts ``[K, n, d]`` of every gated block, text tower first."""
        learner = self.prompt_learner
        return [*learner.text_experts, *learner.vision_experts]

    def model_features(self) -> FrozenSet[str]:
        learner = self.prompt_learner
        extra = {"learned_image_features", "prompt_experts"} if learner.depth_vision else {"prompt_experts"}
        if learner.depth_vision >= 2:
            extra.add("router_weights")
        return super().model_features() | extra

    def word_prompts(self) -> Dict[str, torch.Tensor]:
        """The text prompt's first-block tokens (the experts of deeper blocks are not word embeddings)."""
        ctx = self.prompt_learner.ctx
        return {"ctx": ctx.unsqueeze(0)} if ctx is not None else {}

    export_graph_note = ("its gates mix expert prompts inside the towers' blocks per image; the ONNX export "
                         "covers the fixed-prompt and AMPT heads on the backbone's own image tower")

    def export_settings(self) -> Dict[str, Any]:
        return {"learner": self.prompt_learner.settings(), "layout": self.text_layout.settings()}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "MoEDeepPromptCLIP":
        learner_settings = dict(settings["learner"])
        anchor = {k: tuple(v) if isinstance(v, list) else v for k, v in learner_settings.pop("anchor").items()}
        layout = DeepTextLayout(clip_model, classnames, **settings["layout"])
        learner = MoEDeepPromptLearner(clip_model.ln_final.weight.shape[0], clip_model.visual.conv1.weight.shape[0],
                                       anchor=AnchorSettings(**anchor), **learner_settings)
        model = cls(clip_model, learner, layout)
        load_learned_tensors(model, cls.export_modules, tensors)
        return model
