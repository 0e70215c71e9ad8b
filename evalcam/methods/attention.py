"""Attention-based explanations of vision transformers: attention rollout and Chefer et al.'s
gradient-weighted transformer attribution.

Both read the attention probabilities ``A^(b) = softmax(Q K^T / sqrt(d))`` ``[B, heads, T, T]`` of every
``torch.nn.MultiheadAttention`` block (torchvision's ViT, DeiT-style models). torchvision calls those
modules with ``need_weights=False`` (fused kernel, no probabilities returned), so :func:`record_attention`
puts a forward hook on each one that recomputes the attention explicitly from the module's own
projections and *replaces the module's output* with ``out_proj(A V)`` computed from those probabilities.
The output is the same function (checked to float tolerance in the tests), but now the probabilities
are tensors of the autograd graph, so ``dy/dA`` can be taken. Nothing on the model is changed: the hooks
are removed when the context exits, also on errors.

Token layout: ``T = prefix + s*s``. Row 0 is the class token (the head reads it); the ``prefix`` tokens
that do not fit the square patch grid (class, DeiT's distillation token) are dropped from the map, which
is ``[B, s, s]`` at the patch grid, like the CAM methods' maps at their layer.

- **Attention rollout** (Abnar & Zuidema, ACL 2020, Sec. 3): per block the heads are fused (mean, as in the
  paper; ``max``/``min`` as in jacobgil's vit-explain), the residual connection is modelled as
  ``Ã = 0.5 A + 0.5 I`` with rows re-normalised to 1, and the blocks are multiplied
  ``R = Ã^(B) ··· Ã^(1)``; the map is row 0 of ``R`` over the patch tokens. It does not depend on the
  target class: every target of an image gets the same map.
- **Transformer attribution** (Chefer, Gur & Wolf, CVPR 2021, "Transformer Interpretability Beyond
  Attention Visualization"): Eq. 13, ``Ā^(b) = I + E_h[(∇A^(b) ⊙ R^(n_b))^+]``, in its gradient × attention
  form: the LRP relevance ``R^(n_b)`` of the attention map is replaced by the attention map ``A^(b)``
  itself (the rule of Chefer et al.'s follow-up, ICCV 2021 "Generic Attention-model Explainability",
  Eq. 5-6, for self-attention). ``∇A^(b)`` is the gradient of the target's pre-softmax logit. The blocks
  are aggregated as in Eq. 14 in the order of the authors' code (``compute_rollout_attention`` of their
  ``baselines/ViT/ViT_LRP.py``, identity added, rows *not* re-normalised):
  ``C = Ā^(B) ··· Ā^(1)``, which is also ICCV Eq. 6's update ``R <- R + E_h[(∇A ⊙ A)^+] R`` from
  ``R = I``. The map is row 0 of ``C`` over the patch tokens. The full LRP propagation of the CVPR paper
  is not implemented.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets

# What the refusal on a model without nn.MultiheadAttention suggests instead.
OTHER_METHODS = "gradcam, gradcampp, hirescam, layercam, scorecam, ablationcam, eigencam, occlusion, rise"

_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.MultiheadAttention]]:
    """The model's ``nn.MultiheadAttention`` modules, by name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def require_attention(model: nn.Module, method: str) -> list[tuple[str, nn.MultiheadAttention]]:
    """The attention modules, or a one-line error naming the methods that do run on ``model``."""
    found = attention_modules(model)
    if not found:
        raise ValueError(
            f"{method} needs a transformer whose attention is torch.nn.MultiheadAttention (torchvision "
            f"vit_b_16, DeiT); {type(model).__name__} has none (a CNN, or Swin's shifted-window "
            f"attention): use {OTHER_METHODS} on it"
        )
    return found


def _explicit_attention(
    module: nn.MultiheadAttention, args: tuple, kwargs: dict
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
    """Recompute ``module(*args, **kwargs)`` with explicit probabilities: ``(A [B, h, T, S], output)``."""
    bound = _MHA_SIGNATURE.bind(module, *args, **kwargs)
    bound.apply_defaults()
    call = bound.arguments
    if call["key_padding_mask"] is not None or call["attn_mask"] is not None or call["is_causal"]:
        raise ValueError("attention maps with attn_mask/key_padding_mask/is_causal are not supported")
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError(
            "attention maps of nn.MultiheadAttention with add_bias_kv/add_zero_attn are not supported"
        )
    query, key, value = call["query"], call["key"], call["value"]
    batched = query.ndim == 3
    if not batched:
        query, key, value = query[None], key[None], value[None]
    elif not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    heads, dim = module.num_heads, module.head_dim
    if module._qkv_same_embed_dim:
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q = b_k = b_v = None
    if module.in_proj_bias is not None:
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)

    def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b).unflatten(-1, (heads, dim)).transpose(1, 2)  # [B, h, T, d]

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim), dim=-1)
    mixed = F.dropout(probs, module.dropout, training=module.training) @ v
    out = F.linear(mixed.transpose(1, 2).flatten(2), module.out_proj.weight, module.out_proj.bias)
    weights = None
    if call["need_weights"]:
        weights = probs.mean(1) if call["average_attn_weights"] else probs
    if not batched:
        out, weights = out[0], None if weights is None else weights[0]
    elif not module.batch_first:
        out = out.transpose(0, 1)
    return probs, (out, weights)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every ``nn.MultiheadAttention``'s probabilities ``[B, heads, T, T]``, in call order, during
    the forward passes inside the context (see module doc); hooks are removed on exit, always."""
    recorded: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, _output: tuple) -> tuple:
        probs, output = _explicit_attention(module, args, kwargs)  # type: ignore[arg-type]
        recorded.append(probs)
        return output

    handles = []
    try:
        for _name, module in attention_modules(model):
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def patch_grid(relevance: torch.Tensor) -> torch.Tensor:
    """Row 0 (class token) of ``[B, T, T]`` over the patch tokens, on their ``s x s`` grid: ``[B, s, s]``."""
    tokens = relevance.shape[-1]
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    if prefix == 0:
        raise ValueError(
            f"attention maps need a class token: {tokens} tokens form a bare {side}x{side} patch grid; "
            f"use gradcam on a token layer for models without one"
        )
    return relevance[:, 0, prefix:].reshape(-1, side, side)


def fuse_heads(attention: torch.Tensor, how: str) -> torch.Tensor:
    """``[B, h, T, T] -> [B, T, T]`` by mean (the paper), max or min over the heads."""
    if how == "mean":
        return attention.mean(1)
    if how == "max":
        return attention.amax(1)
    if how == "min":
        return attention.amin(1)
    raise ValueError(f"head_fusion must be mean, max or min, got {how!r}")


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Abnar & Zuidema's rollout ``Ã^(B) ··· Ã^(1)`` with ``Ã = norm_rows(0.5 A + 0.5 I)``: ``[B, T, T]``."""
    result = None
    for attention in attentions:
        fused = fuse_heads(attention.float(), head_fusion)
        eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        step = 0.5 * fused + 0.5 * eye
        step = step / step.sum(-1, keepdim=True)
        result = step if result is None else step @ result
    assert result is not None
    return result


def gradient_rollout(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s ``C = Ā^(B) ··· Ā^(1)``, ``Ā = I + E_h[(∇A ⊙ A)^+]``: ``[B, T, T]`` (module doc)."""
    result = None
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient.float() * attention.float()).clamp_min(0).mean(1)
        step = weighted + torch.eye(weighted.shape[-1], device=weighted.device, dtype=weighted.dtype)
        result = step if result is None else step @ result
    assert result is not None
    return result


class _AttentionExplainer(Explainer):
    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        return bool(attention_modules(model))


class AttentionRollout(_AttentionExplainer):
    """Abnar & Zuidema 2020 attention rollout (see module doc); one forward pass, no gradients."""

    name = "attention_rollout"

    def __init__(
        self, model: nn.Module, head_fusion: str = "mean", autocast: torch.dtype | str | None = None
    ) -> None:
        super().__init__(model, autocast)
        require_attention(model, self.name)
        fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)  # fail early on a wrong option
        self.head_fusion = head_fusion

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with torch.no_grad(), record_attention(self.model) as attentions, self._autocast():
            logits = self.model(images)
            classes, score_fns = resolve_targets(targets, logits)
        with self._full_precision():
            maps = patch_grid(rollout(attentions, self.head_fusion))
        # Class-agnostic: every target column of an image gets the same map.
        stacked = maps[:, None].expand(-1, len(score_fns), -1, -1).contiguous()
        return Explanation(maps=stacked, logits=logits.float(), classes=classes)


class TransformerAttribution(_AttentionExplainer):
    """Chefer et al. CVPR 2021 gradient-weighted attention rollout (see module doc); one forward pass and
    one ``autograd.grad`` per target column, taken with respect to the attention probabilities only."""

    name = "transformer_attribution"

    def __init__(self, model: nn.Module, autocast: torch.dtype | str | None = None) -> None:
        super().__init__(model, autocast)
        require_attention(model, self.name)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        # The input needs no gradient, but requiring it keeps a graph when every parameter is frozen.
        images = images.to(self.device).detach().requires_grad_(True)
        with torch.enable_grad(), record_attention(self.model) as attentions, self._autocast():
            logits = self.model(images)
            classes, score_fns = resolve_targets(targets, logits)
            columns = []
            for k, score_fn in enumerate(score_fns):
                grads = torch.autograd.grad(
                    score_fn(logits).sum(), attentions, retain_graph=k < len(score_fns) - 1
                )
                columns.append(grads)
        attentions = [a.detach() for a in attentions]
        with self._full_precision():
            maps = [patch_grid(gradient_rollout(attentions, list(grads))) for grads in columns]
        return Explanation(maps=torch.stack(maps, 1), logits=logits.detach().float(), classes=classes)
