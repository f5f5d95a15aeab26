"""Deep prompts in both towers of CLIP (VPT / IVLP / MaPLe / FAP), on the ``clip`` package's modules.

Learned tokens enter the first J transformer blocks of a tower:

- **text**: the prompt is ``[SOS][ctx_1..ctx_n][words of CTX_INIT after the
  first n][class][.][EOS]`` (MaPLe's layout: with ``CTX_INIT "a photo of a"``
  and n = 2 the learned tokens start as "a photo" and "of a" stays fixed);
  block 0 reads ``ctx`` at positions 1..n, each block j < J reads its own
  tokens there instead (:class:`~ampt.models.TextEncoder`'s ``deep_prompts``);
- **image**: n tokens appended after the patch tokens (after the positional
  embedding, before ``ln_pre``, as MaPLe); each block j < J replaces the last
  n tokens by its own (:func:`encode_image_with_prompts`).

:class:`DeepPromptLearner` holds every learnable tensor, fp32, and couples
the towers:

- ``independent`` (IVLP, AdvVLP): text and image tokens learned separately;
- ``maple`` (MaPLe, AdvMaPLeOrig): text tokens learned at every depth, the image
  tokens of depth j are ``Linear_j(text tokens of depth j)`` (text width ->
  vision width);
- ``fap`` (FAP, and AdvMaPLe as FAP's code runs it): depth 0 as MaPLe (image = ``Linear(ctx)``); at depths
  1..J-1 the image tokens are learned and the text tokens are
  ``Linear_j(image tokens)`` (vision width -> text width).

J = 0 in a tower leaves it exactly the plain CLIP tower. The text side
depends only on the parameters, so a model computes it once per step or
evaluation (``text_features``) and attacks reuse it.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .clip_loader import clip
from ..errors import UserError

logger = logging.getLogger(__name__)

COUPLINGS = ("independent", "maple", "fap")
_tokenizer = clip.clip._tokenizer


def normal_prompt(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=0.02))


def first_text_prompt(depth_text: int, n_ctx_text: int, text_width: int,
                      ctx_init: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    """Block 0's text tokens ``ctx`` (N(0, 0.02), then ``ctx_init``'s words if given); None without text depth."""
    if not depth_text:
        return None
    ctx = normal_prompt(n_ctx_text, text_width)
    if ctx_init is not None:
        with torch.no_grad():
            ctx.copy_(ctx_init)
    return ctx


class DeepPromptLearner(nn.Module):
    """The learned tokens of both towers; ``text_tokens()`` and ``vision_tokens()`` give them per depth.

    ``text_tokens() -> [J_t tensors [n_t, d_t]]`` (index 0 is the prompt's
    ``ctx``), ``vision_tokens() -> [J_v tensors [n_v, d_v]]``. Coupled
    learners (``maple``, ``fap``) need J_t = J_v and n_t = n_v.
    """

    n_prompts = 1

    def __init__(self, text_width: int, vision_width: int, coupling: str = "independent",
                 n_ctx_text: int = 2, n_ctx_vision: int = 2, depth_text: int = 1, depth_vision: int = 1,
                 ctx_init: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if coupling not in COUPLINGS:
            raise UserError(f'Unknown deep-prompt coupling "{coupling}"; valid: {", ".join(COUPLINGS)}')
        if min(n_ctx_text, n_ctx_vision, depth_text, depth_vision) < 0:
            raise UserError("deep prompts need n_ctx >= 0 and depth >= 0")
        if coupling != "independent" and (depth_text != depth_vision or n_ctx_text != n_ctx_vision):
            raise UserError(f"{coupling} coupling needs the same depth and token count in both towers "
                             f"(got depths {depth_text}/{depth_vision}, tokens {n_ctx_text}/{n_ctx_vision})")
        self.coupling = coupling
        self.depth_text, self.depth_vision = depth_text if n_ctx_text else 0, depth_vision if n_ctx_vision else 0
        self.n_ctx_text, self.n_ctx_vision = n_ctx_text, n_ctx_vision
        self.ctx = first_text_prompt(self.depth_text, n_ctx_text, text_width, ctx_init)
        deeper = max(self.depth_text - 1, 0)
        if coupling == "independent":
            self.text_deep = nn.ParameterList([normal_prompt(n_ctx_text, text_width) for _ in range(deeper)])
            self.vision = nn.ParameterList([normal_prompt(n_ctx_vision, vision_width) for _ in range(self.depth_vision)])
        elif coupling == "maple":
            self.text_deep = nn.ParameterList([normal_prompt(n_ctx_text, text_width) for _ in range(deeper)])
            self.to_vision = nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(self.depth_text)])
        else:  # fap
            self.to_vision = nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(min(self.depth_text, 1))])
            self.vision_deep = nn.ParameterList([normal_prompt(n_ctx_vision, vision_width) for _ in range(deeper)])
            self.to_text = nn.ModuleList([nn.Linear(vision_width, text_width) for _ in range(deeper)])

    def settings(self) -> Dict[str, object]:
        """The constructor arguments besides the tower widths and the initial context."""
        return {"coupling": self.coupling, "n_ctx_text": self.n_ctx_text, "n_ctx_vision": self.n_ctx_vision,
                "depth_text": self.depth_text, "depth_vision": self.depth_vision}

    def text_tokens(self) -> List[torch.Tensor]:
        if not self.depth_text:
            return []
        if self.coupling == "fap":
            return [self.ctx] + [proj(v) for proj, v in zip(self.to_text, self.vision_deep)]
        return [self.ctx, *self.text_deep]

    def vision_tokens(self) -> List[torch.Tensor]:
        if self.coupling == "independent":
            return list(self.vision)
        if not self.depth_vision:
            return []
        if self.coupling == "maple":
            return [proj(t) for proj, t in zip(self.to_vision, [self.ctx, *self.text_deep])]
        return [self.to_vision[0](self.ctx), *self.vision_deep]

    def extra_repr(self) -> str:
        return (f"coupling={self.coupling}, text: {self.n_ctx_text} tokens x {self.depth_text} blocks, "
                f"image: {self.n_ctx_vision} tokens x {self.depth_vision} blocks")


class DeepTextLayout(nn.Module):
    """The frozen token layout of the class prompts ``"{words} {class}."``, the first ``n_ctx`` words learned.

    ``words`` is ``ctx_init`` (which must have at least ``n_ctx`` tokens) or
    ``n_ctx`` placeholders. ``embeddings(ctx) -> [C, L, d]`` puts ``ctx``
    (``[n_ctx, d]``) at positions 1..n_ctx; with ``n_ctx = 0`` the prompt is
    the hand-written ``"{ctx_init} {class}."``. Buffers are cut after the
    longest prompt (exact, see :mod:`ampt.models.text_encoder`).
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int, ctx_init: str = "") -> None:
        super().__init__()
        words = ctx_init.replace("_", " ").strip()
        if words and len(_tokenizer.encode(words)) < n_ctx:
            raise UserError(f'CTX_INIT "{ctx_init}" has fewer than N_CTX {n_ctx} tokens')
        words = words or " ".join(["X"] * n_ctx)
        names = [name.replace("_", " ") for name in classnames]
        token_ids = clip.tokenize([f"{words} {name}.".strip() for name in names])
        token_ids = token_ids[:, : int(token_ids.argmax(dim=-1).max()) + 1]
        device = clip_model.token_embedding.weight.device
        with torch.no_grad():
            embedding = clip_model.token_embedding(token_ids.to(device)).float()
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.init_words = bool(ctx_init.strip())
        self.register_buffer("token_ids", token_ids.to(device), persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1], persistent=False)
        self.register_buffer("word_ctx", embedding[0, 1:1 + n_ctx].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:], persistent=False)

    def settings(self) -> Dict[str, object]:
        """The constructor arguments besides the backbone and the class names."""
        return {"n_ctx": self.n_ctx, "ctx_init": self.ctx_init}

    def initial_ctx(self) -> Optional[torch.Tensor]:
        """The embeddings of CTX_INIT's first n_ctx tokens (None without CTX_INIT: random init)."""
        return self.word_ctx.cpu() if self.init_words else None

    def embeddings(self, ctx: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        n = self.token_prefix.shape[0]
        parts = [self.token_prefix]
        if ctx is not None:
            parts.append(ctx.to(self.token_prefix.dtype).unsqueeze(0).expand(n, -1, -1))
        return torch.cat([*parts, self.token_suffix], dim=1), self.token_ids


def prompted_vit_input(visual: nn.Module, x: torch.Tensor, first_prompt: torch.Tensor) -> torch.Tensor:
    """``[L, B, d]``: the ``clip`` package's ViT input of pixels ``x`` (class token, patches, positional
    embedding), ``first_prompt`` (``[n, d]``) appended as the last n tokens, after ``ln_pre``."""
    if not isinstance(visual, clip.model.VisionTransformer):
        raise ValueError(f"Visual deep prompts need a ViT backbone; {type(visual).__name__} has no tokens")
    b = x.shape[0]
    x = visual.conv1(x)
    x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = torch.cat([x, first_prompt.to(x.dtype).unsqueeze(0).expand(b, -1, -1)], dim=1)
    return visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND


def encode_image_with_prompts(visual: nn.Module, x: torch.Tensor, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``visual(x)`` of the ``clip`` package's ViT with ``prompts[j]`` (``[n, d]``) as the last n tokens of block j.

    ``prompts[0]`` is appended after the positional embedding (before
    ``ln_pre``); ``prompts[j]``, j >= 1, replaces the previous block's
    outputs at those positions. No prompts: ``visual(x)`` itself.
    """
    if not prompts:
        return visual(x)
    b, n = x.shape[0], prompts[0].shape[0]
    x = prompted_vit_input(visual, x, prompts[0])
    for index, block in enumerate(visual.transformer.resblocks):
        if 0 < index < len(prompts):
            x = torch.cat([x[: x.shape[0] - n], prompts[index].to(x.dtype).unsqueeze(1).expand(-1, b, -1)], dim=0)
        x = block(x)
    x = visual.ln_post(x.permute(1, 0, 2)[:, 0, :])
    return x @ visual.proj if visual.proj is not None else x
