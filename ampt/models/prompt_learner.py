"""A bank of K learned prompts in CoOp's form, ``[SOS][v_1..v_M][class tokens][.][EOS]``.

With K = 1 this is CoOp's prompt learner (Zhou et al., IJCV 2022): the same
token layout, class-token positions and initialisation, so the same context
vectors give the same text features. Differences, all deliberate:

- The frozen SOS/class/EOS embeddings are computed once and cut after the
  longest real sequence (the text encoder's output is unchanged, see
  :mod:`ampt.models.text_encoder`); they are non-persistent buffers, so a
  checkpoint holds only ``ctx`` (CoOp's ``token_prefix``/``token_suffix`` are
  dropped when an old checkpoint is loaded, as CoOp does).
- ``ctx_init`` sets ``n_ctx`` to its number of BPE tokens (CoOp counts
  words, the same for "a photo of a"), and with ``csc=True`` it initialises
  every class's context from the words (CoOp falls back to a shared context).
- ``ctx`` stays fp32 even when CLIP runs in fp16 (the text encoder casts).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UserError
from .backbone import Tokenizer, backbone_info
from .text_tower import text_tower

logger = logging.getLogger(__name__)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """``forward() -> (embeddings [K*C, L, d], token_ids [K*C, L])``, prompt-major (row k*C + c).

    ``.ctx`` is ``[K, n_ctx, d]`` (unified context, UC) or ``[K, C, n_ctx, d]``
    (class-specific, CSC). Random init is N(0, 0.02), independent per prompt;
    with ``ctx_init`` words, prompt 0 (or every prompt when ``init_all``)
    starts from the words' token embeddings.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str = "",
        csc: bool = False,
        class_token_position: str = "end",
        n_prompts: int = 1,
        init_all: bool = False,
    ) -> None:
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise UserError(
                f'Unknown class token position "{class_token_position}". '
                f'Valid: {", ".join(CLASS_TOKEN_POSITIONS)}'
            )
        if n_prompts < 1:
            raise UserError(f"n_prompts must be >= 1 (got {n_prompts})")
        if not classnames:
            raise UserError("PromptLearner needs at least one class name")
        classnames = [name.replace("_", " ") for name in classnames]
        tokenizer = backbone_info(clip_model).tokenizer
        tower = text_tower(clip_model)
        width = tower.width
        word_vectors = _word_embeddings(tower.token_embedding, tokenizer, ctx_init) if ctx_init else None
        if word_vectors is not None:
            if n_ctx != word_vectors.shape[0]:
                logger.info("n_ctx set to %d, the number of tokens of ctx_init", word_vectors.shape[0])
            n_ctx = word_vectors.shape[0]
        if n_ctx < 1:
            raise UserError(f"n_ctx must be >= 1 (got {n_ctx})")

        self.n_cls = len(classnames)
        self.n_ctx = n_ctx
        self.n_prompts = n_prompts
        self.csc = csc
        self.class_token_position = class_token_position
        self.classnames = classnames
        self.ctx_init = ctx_init
        self.name_lens = [len(tokenizer.encode(name)) for name in classnames]
        self.ctx = nn.Parameter(self._initial_ctx(width, word_vectors, init_all))
        self._build_token_buffers(tower, tokenizer, classnames)
        logger.info(
            "Prompt learner: %d prompt(s) x %d context tokens (%s), class token %s, init %s",
            n_prompts, n_ctx, "class-specific" if csc else "unified", class_token_position,
            f'"{ctx_init}"' + (" (all prompts)" if init_all else " (prompt 1)") if ctx_init else "N(0, 0.02)",
        )

    def _initial_ctx(self, width: int, word_vectors: Optional[torch.Tensor], init_all: bool) -> torch.Tensor:
        per_prompt = (self.n_cls, self.n_ctx, width) if self.csc else (self.n_ctx, width)
        ctx = torch.empty(self.n_prompts, *per_prompt)
        n_words = 0 if word_vectors is None else (self.n_prompts if init_all else 1)
        if n_words:
            ctx[:n_words] = word_vectors  # broadcast over prompts (and classes with CSC)
        if n_words < self.n_prompts:
            # drawn only for the random prompts: K = 1 consumes the RNG exactly as CoOp does
            nn.init.normal_(ctx[n_words:], std=0.02)
        return ctx

    def _build_token_buffers(self, tower, tokenizer: Tokenizer, classnames: List[str]) -> None:
        placeholder = " ".join(["X"] * self.n_ctx)  # one token each, replaced by ctx
        token_ids = tokenizer.tokenize([f"{placeholder} {name}." for name in classnames])
        length = tower.kept_length(token_ids)  # the longest real sequence (all of it if the tower needs it)
        token_ids = token_ids[:, :length]
        device = tower.token_embedding.weight.device
        with torch.no_grad():
            embedding = tower.token_embedding(token_ids.to(device)).float()
        self.register_buffer("token_ids", token_ids.to(device), persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1], persistent=False)  # SOS
        # class name, ".", EOS
        self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx:], persistent=False)
        order = _position_order(self.class_token_position, self.n_ctx, self.name_lens, length)
        self.register_buffer("order", order.to(device) if order is not None else None, persistent=False)

    def settings(self) -> Dict[str, object]:
        """The constructor arguments besides the backbone and class names that rebuild this learner's layout."""
        return {"n_ctx": self.n_ctx, "csc": self.csc, "class_token_position": self.class_token_position,
                "n_prompts": self.n_prompts}

    @property
    def seq_len(self) -> int:
        """Length L of the returned sequences (the longest prompt, EOS included)."""
        return self.token_ids.shape[1]

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        k, c = self.n_prompts, self.n_cls
        ctx = self.ctx
        if not self.csc:
            ctx = ctx.unsqueeze(1).expand(k, c, -1, -1)
        prefix = self.token_prefix.unsqueeze(0).expand(k, -1, -1, -1).to(ctx.dtype)
        suffix = self.token_suffix.unsqueeze(0).expand(k, -1, -1, -1).to(ctx.dtype)
        prompts = torch.cat([prefix, ctx, suffix], dim=2)  # [K, C, L, d], class token at the end
        if self.order is not None:
            index = self.order.unsqueeze(0).unsqueeze(-1).expand_as(prompts)
            prompts = prompts.gather(2, index)
        return prompts.reshape(k * c, self.seq_len, -1), self.token_ids.repeat(k, 1)

    def shared_prefix(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(prefixes [K, 1 + n_ctx, d], suffixes [K*C, S, d], suffix token ids [K*C, S])``, or None.

        With a unified context and the class token at the end, all C prompts
        of prompt k start with the same tokens ``[SOS, ctx_k]``: ``prefixes[k]``
        followed by ``suffixes[k*C + c]`` is row ``k*C + c`` of :meth:`forward`
        (up to its trimmed length). None for class-specific contexts or a
        class token in the middle or front, whose prompts share only SOS.
        """
        if self.csc or self.class_token_position != "end":
            return None
        k, c = self.n_prompts, self.n_cls
        ctx = self.ctx
        sos = self.token_prefix[:1].expand(k, -1, -1).to(ctx.dtype)  # [K, 1, d], the same for every class
        suffixes = self.token_suffix.to(ctx.dtype).unsqueeze(0).expand(k, -1, -1, -1).reshape(k * c, -1, ctx.shape[-1])
        suffix_ids = self.token_ids[:, 1 + self.n_ctx:].repeat(k, 1)
        return torch.cat([sos, ctx], dim=1), suffixes, suffix_ids

    def _load_from_state_dict(
        self, state_dict: Dict[str, torch.Tensor], prefix: str, *args, **kwargs
    ) -> None:
        # CoOp's checkpoints: frozen token buffers (recomputed here from the
        # current class names) and a ctx without the prompt axis.
        for name in ("token_prefix", "token_suffix", "token_ids", "order"):
            state_dict.pop(prefix + name, None)
        key = prefix + "ctx"
        if key in state_dict and state_dict[key].dim() == self.ctx.dim() - 1 and self.n_prompts == 1:
            state_dict[key] = state_dict[key].unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _word_embeddings(token_embedding: nn.Embedding, tokenizer: Tokenizer, words: str) -> torch.Tensor:
    """Token embeddings ``[n_tokens, d]`` of ``words`` (underscores read as spaces)."""
    words = words.replace("_", " ").strip()
    n_tokens = len(tokenizer.encode(words))
    if n_tokens == 0:
        raise UserError(f'ctx_init "{words}" has no tokens')
    token_ids = tokenizer.tokenize(words).to(token_embedding.weight.device)
    with torch.no_grad():
        embedding = token_embedding(token_ids).float()
    return embedding[0, 1:1 + n_tokens].cpu()


def _position_order(position: str, n_ctx: int, name_lens: List[int], length: int) -> Optional[torch.Tensor]:
    """Per class, where each output position reads from the class-at-end layout; None for "end".

    End layout: 0 = SOS, 1..n_ctx = context, then the class name's tokens, ".", EOS.
    """
    if position == "end":
        return None
    ctx = list(range(1, 1 + n_ctx))
    half = n_ctx // 2
    rows = []
    for name_len in name_lens:
        name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        rest = list(range(1 + n_ctx + name_len, length))
        if position == "middle":
            rows.append([0] + ctx[:half] + name + ctx[half:] + rest)
        else:  # front
            rows.append([0] + name + ctx + rest)
    return torch.tensor(rows, dtype=torch.long)
