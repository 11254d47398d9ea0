"""Dropout drawn cheaply on a CPU, for training: of attention weights and of activations.

`nn.Dropout` and `nn.MultiheadAttention` draw their masks with `bernoulli_`, which on a CPU takes
every value one at a time from a float generator: about 10 ns a value. For the released shapes
(a 500-step vision window, 4 heads) that was a third of a training step (BENCHMARKS.md, "Training
speed"). Attention with dropout also leaves the fused kernels, which have no dropout on a CPU, for
a math path whose softmax checks every row for being fully masked. Here each value is kept or
dropped by comparing 16 random bits with a threshold, four values per 64-bit draw, about a tenth
of the cost. The probability of dropping is p rounded to a multiple of 2^-16 (0.2 becomes
0.19999695), and what is kept is scaled by the exact inverse of the chance of being kept, so the
expected output is the same.

Only training on a CPU takes these paths; evaluation, serving and CUDA (whose kernels draw dropout
on the device) run the torch modules' own code. Parameters and their names are the torch modules',
so checkpoints are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LANES = 1 << 16  # the values of one 16-bit lane of a random draw


def kept(shape: torch.Size, p: float, like: Tensor) -> Tensor:
    """1 for each value kept, 0 for each dropped (with probability p rounded to a multiple of
    2^-16), scaled by 1 / P(kept): a tensor of `shape` with like's dtype and device."""
    numel = shape.numel()
    draws = torch.empty((numel + 3) // 4, dtype=torch.int64, device=like.device)
    draws.random_(-(1 << 63), None)  # the full 64-bit range: every 16-bit lane uniform
    lanes = draws.view(torch.int16)[:numel].view(shape)  # uniform on [-2^15, 2^15)
    below = round(p * LANES)  # a lane among the lowest `below` values is dropped
    mask = torch.ge(lanes, below - LANES // 2, out=torch.empty(shape, dtype=like.dtype, device=like.device))
    return mask.mul_(LANES / (LANES - below))


def cheap_here(module: nn.Module, p: float, x: Tensor) -> bool:
    """Whether a module draws its dropout here: training, on a CPU, with something to drop and keep."""
    return module.training and 0 < p < 1 and x.device.type == "cpu"


class Dropout(nn.Dropout):
    """`nn.Dropout`, with the cheap mask above while training on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if not cheap_here(self, self.p, x) or self.inplace:
            return super().forward(x)
        return x * kept(x.shape, self.p, x)


class Attention(nn.MultiheadAttention):
    """`nn.MultiheadAttention`, with the cheap dropout above while training on a CPU.

    Handles what the decoder layers pass: batch-first inputs with biases, keys that are the values
    (self- or cross-attention), a bool key padding mask, no attention mask, no weights returned;
    anything else goes to `nn.MultiheadAttention`."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not (self.handles(key, value, key_padding_mask, need_weights, attn_mask, is_causal)
                and cheap_here(self, self.dropout, query)):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        return self.out_proj(self._attend(*self._project(query, key), key_padding_mask)), None

    def handles(self, key: Tensor, value: Tensor, key_padding_mask: Tensor | None, need_weights: bool,
                attn_mask: Tensor | None, is_causal: bool) -> bool:
        """Whether a call is one that `_project` and `_attend` compute as nn.MultiheadAttention would."""
        return (self.batch_first and self._qkv_same_embed_dim and self.in_proj_bias is not None
                and self.bias_k is None and key is value and not need_weights and attn_mask is None
                and not is_causal and (key_padding_mask is None or key_padding_mask.dtype == torch.bool))

    def _project(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q from the query, k and v from the memory (the keys and values), as (B, heads, steps, d_head);
        one matrix product for self-attention."""
        d, weight, bias = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if query is memory:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, weight[:d], bias[:d])
            k, v = F.linear(memory, weight[d:], bias[d:]).chunk(2, dim=-1)
        return tuple(t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """softmax(q k^T / sqrt(d_head)) over the real keys, dropped out, times v: (B, steps, d)."""
        scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (B, heads, L, S)
        real = None  # (B, 1, 1, 1): 0 for a sample with no key at all
        if key_padding_mask is not None:
            empty = key_padding_mask.all(dim=1)  # (B,)
            if empty.any():  # weights 0, as nn.MultiheadAttention gives, with no NaN to backpropagate
                key_padding_mask, real = key_padding_mask & ~empty[:, None], (~empty).to(q.dtype)[:, None, None, None]
            # Adding 0 or -inf is several times faster than masked_fill on a CPU.
            scores = scores + torch.zeros_like(key_padding_mask, dtype=q.dtype).masked_fill_(
                key_padding_mask, float("-inf"))[:, None, None, :]
        weights = torch.softmax(scores, dim=-1)
        if real is not None:
            weights = weights * real
        return (weights * kept(weights.shape, self.dropout, weights) @ v).transpose(1, 2).flatten(2)


def with_cheap_dropout(layer: nn.TransformerDecoderLayer) -> nn.TransformerDecoderLayer:
    """The layer's attention and dropout modules as the classes above: the same modules, with their
    weights as initialised, and a cheaper dropout in CPU training."""
    for attention in (layer.self_attn, layer.multihead_attn):
        attention.__class__ = Attention
    for dropout in (layer.dropout, layer.dropout1, layer.dropout2, layer.dropout3):
        dropout.__class__ = Dropout
    return layer
