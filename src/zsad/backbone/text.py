"""The text tower of ``ClipBackbone``: cached sentence embeddings and a block loop for deep text prompts.

Why a loop of our own: AdaCLIP puts learnable prompts into the first text blocks, and every method wants each
sentence encoded once per backbone. The loop stops each sentence at its end token (exact under the causal mask), and
a test checks it equals open_clip's ``encode_text``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadInputError


class TextTower:
    """Text-side methods of ``ClipBackbone`` (a mixin: the model, tokenizer and block helpers live there)."""

    model: Any
    tokenizer: Any
    model_name: str
    _text_cache: dict[str, torch.Tensor]

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        raise NotImplementedError

    def block_attention(
        self,
        index: int,
        x: torch.Tensor,
        *,
        need_vv: bool = False,
        cls_only: bool = False,
        tower: Literal["visual", "text"] = "visual",
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention residual of one block (``ClipBackbone`` implements it for both towers)."""
        raise NotImplementedError

    def block_mlp(self, index: int, x: torch.Tensor, tower: Literal["visual", "text"] = "visual") -> torch.Tensor:
        """MLP residual of one block (``ClipBackbone`` implements it for both towers)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_text(
        self, prompts: Sequence[str], normalize: bool = False, batch_size: int = 256, *, cache: bool = True
    ) -> torch.Tensor:
        """(N, D) text embeddings; each sentence is encoded once per backbone and cached.

        The cache is keyed by the sentence itself, which subsumes a (prompt set, class name) key:
        two methods sharing sentences share the work. ``cache=False`` (one-off sentences, e.g. RWDA's tens of
        thousands of random prompts) reads the cache but does not grow it. zsad's text loop stops each sentence at
        its end token: the same embeddings as open_clip's ``encode_text``, with less compute.
        """
        store = self._text_cache if cache else {}
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            emb = (self.encode_text_tokens(tokens) if self._text_loop else self.model.encode_text(tokens)).float()
            store.update(zip(chunk, emb.cpu(), strict=True))
        out = torch.stack([store[p] if p in store else self._text_cache[p] for p in prompts]).to(self.device)
        return F.normalize(out, dim=-1) if normalize else out

    @property
    def _text_loop(self) -> bool:
        """Whether ``encode_text_tokens`` handles this text tower (causal, pooled at the end token)."""
        model = self.model
        return (
            getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
            and getattr(model, "attn_mask", None) is not None
        )

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, context) token ids on the backbone's device."""
        return self.tokenizer(list(prompts)).to(self.device)

    def encode_text_tokens(
        self,
        tokens: torch.Tensor,
        *,
        deep_prompts: dict[int, torch.Tensor] | None = None,
        start: int = 1,
        input_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text tower on token ids (N, L) -> (N, D) projected features (not cached), with optional learnt prompts.

        Before block ``i`` (0-indexed) of ``deep_prompts``, sequence positions ``start .. start+M-1`` are replaced by
        ``deep_prompts[i]`` of shape (N or 1, M, width): learnable prompts in the text encoder (AdaCLIP, AnomalyCLIP).
        ``input_prompts`` (N or 1, K, width) replace the *token embeddings* at ``start .. start+K-1`` before the
        positional embedding is added: learnable context words (CoOp style; AnomalyCLIP). The pooled position is
        found from the token ids as open_clip does; a test checks the loop equals ``encode_text``.
        """
        return self._text_tower(tokens, deep_prompts or {}, start, sets=None, input_prompts=input_prompts)

    def encode_text_prompt_sets(
        self, tokens: torch.Tensor, deep_prompts: dict[int, torch.Tensor], *, start: int = 1
    ) -> torch.Tensor:
        """Every sentence (S, L) under each of P prompt sets {block: (P, M, width)} -> (P, S, D).

        Equal to ``encode_text_tokens`` on the sentences repeated P times, but the blocks before the first prompted
        one run once for all sets (AdaCLIP's per-image text prompts start at block 1).
        """
        sets = {v.shape[0] for v in deep_prompts.values()}
        if len(sets) != 1:
            raise ZsadInputError(f"prompt sets need one common first dimension, got {sorted(sets)}")
        return self._text_tower(tokens, deep_prompts, start, sets=sets.pop())

    @staticmethod
    def _overwrite(x: torch.Tensor, p: torch.Tensor, idx: torch.Tensor, start: int) -> torch.Tensor:
        """Positions ``start ..`` of ``x`` (n, T, W) replaced by ``p`` (1 or N, M, W) (rows ``idx`` of N)."""
        p = p.to(x.dtype)
        if p.shape[0] != 1:
            p = p[idx]
        m = p.shape[1]
        return torch.cat([x[:, :start], p.expand(x.shape[0], -1, -1), x[:, start + m :]], dim=1)

    def _text_tower(
        self,
        tokens: torch.Tensor,
        prompts: dict[int, torch.Tensor],
        start: int,
        sets: int | None,
        input_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        pool = getattr(model, "text_pool_type", "argmax")
        if pool not in ("argmax", "eos") or getattr(model, "attn_mask", None) is None:
            raise ZsadInputError(f"{self.model_name}: only causal text towers pooled at the end token are supported")
        cast = model.transformer.get_cast_dtype()
        eos: Any = getattr(model, "text_eos_id", None)
        end = tokens.argmax(-1) if pool == "argmax" else tokens.eq(eos).int().argmax(-1)
        blocks = model.transformer.resblocks
        first = min(prompts, default=len(blocks))
        out: torch.Tensor | None = None
        # Under the causal mask nothing after the pooled (end) token reaches it, so sentences run in groups of equal
        # length, each cut just after its end token (exact), and the pooled token is the group's last position.
        for stop in sorted(set(end.tolist())):
            idx = (end == stop).nonzero().squeeze(1)
            length = stop + 1
            tok = tokens[idx, :length]
            x = model.token_embedding(tok).to(cast)
            if input_prompts is not None:
                x = self._overwrite(x, input_prompts, idx, start)
            x = x + model.positional_embedding[:length].to(cast)
            mask = model.attn_mask[:length, :length]
            for i in range(len(blocks)):
                if sets is not None and i == first:
                    x = x.repeat(sets, 1, 1)  # set-major: row p * len(idx) + s
                if i in prompts:
                    if sets is not None:
                        p = prompts[i].to(x.dtype).repeat_interleave(len(idx), dim=0)
                        x = torch.cat([x[:, :start], p, x[:, start + p.shape[1] :]], dim=1)
                    else:
                        x = self._overwrite(x, prompts[i], idx, start)
                o, _ = self.block_attention(i, x, tower="text", attn_mask=mask)
                x = self.block_mlp(i, x + o, tower="text")
            pooled = model.ln_final(x[:, -1])
            proj = model.text_projection
            if proj is not None:
                pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
            if sets is not None:
                pooled = pooled.reshape(sets, len(idx), -1)
            if out is None:
                shape = (
                    (tokens.shape[0], pooled.shape[-1]) if sets is None else (sets, tokens.shape[0], pooled.shape[-1])
                )
                out = pooled.new_empty(shape)
            out[..., idx, :] = pooled
        assert out is not None
        return out

    def clear_text_cache(self) -> None:
        """Forget every cached sentence embedding, so the next ``encode_text`` runs the text tower again."""
        self._text_cache.clear()
