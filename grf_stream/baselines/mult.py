"""MulT: the Multimodal Transformer baseline, generalised from 3 to n modalities.

MulT (Tsai et al., ACL 2019, "Multimodal Transformer for Unaligned Multimodal
Language Sequences") fuses unaligned sequences without any word-level
alignment. Every modality is first projected to a common width ``d`` by a
kernel-size-1 Conv1d. Then, for every ordered pair of distinct modalities
(source -> target), a *crossmodal transformer* lets the target sequence attend
to the source sequence: the target gives the queries, the source the keys and
values, so the output keeps the target's length. For each target, the outputs
of its crossmodal transformers are concatenated on the feature axis and passed
through a self-attention ("mem") transformer, whose last time step summarises
that target. The summaries of all targets are concatenated and fed to a
residual MLP head that predicts one value per sample.

Generalisation to n modalities (the paper and its code hard-wire text, audio
and vision):

* n(n-1) crossmodal transformers of width ``d``, one per ordered pair;
* n mem transformers of width ``(n-1) * d``, one per target;
* a head over ``n * (n-1) * d`` features.

Parameters and compute therefore grow as O(n^2) in the number of modalities
(the mem transformers even as O(n^3) in parameters, because their width grows
with n); `grf_stream.flops.mult_flops` gives the forward cost.

The layers follow the official code: pre-LayerNorm residual blocks
(cross-attention, then a ReLU FFN of width 4d), the input scaled by sqrt(width)
plus fairseq-style sinusoidal positions (starting at 1), dropout on that
embedding, and a final LayerNorm. As in the official code, a cross-attention
block normalises the query and the key/value sequence with the *same*
LayerNorm, and a modality whose feature size already equals ``d`` is not
projected. Two details of the 3-modality code have no n-modality analogue and
are left out: the per-target attention dropouts (``attn_dropout_a/_v``; one
``attn_dropout`` serves all) and the extra dropout on the raw text input.

Padding: ``masks[name]`` (B, T) is True on real steps. Padded steps are zeroed
on input, masked as keys in every attention, and the summary of a target is
its last *real* step, so right-padding never changes a prediction. A sample
whose modality has no real step at all is treated as having a single all-zero
real step at position 0; without this every attention over it would be a
softmax over nothing and return NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MulTConfig", "MulTOutput", "MulT"]


@dataclass
class MulTConfig:
    """Hyper-parameters of :class:`MulT`; defaults are the official CMU-MOSI ones."""

    modalities: dict[str, int]  # name -> feature size, in a fixed order
    d_model: int = 30  # per-modality width (official MOSI: 30)
    num_layers: int = 5  # crossmodal layers (official ``nlevels``); mem uses max(num_layers, 3)
    num_heads: int = 5
    attn_dropout: float = 0.1  # on attention weights
    relu_dropout: float = 0.1  # after the FFN's ReLU
    res_dropout: float = 0.1  # on each residual branch
    embed_dropout: float = 0.25  # on the scaled input + positions of every transformer
    out_dropout: float = 0.0  # inside the residual MLP head

    def __post_init__(self) -> None:
        if not isinstance(self.modalities, dict) or len(self.modalities) < 2:
            raise ValueError(
                f"modalities={self.modalities!r}: MulT needs at least 2 modalities; "
                "pass a dict of name -> feature size with 2 or more entries"
            )
        for name, size in self.modalities.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"modalities: name {name!r} is invalid; use a non-empty string without '.'"
                )
            if not _is_positive_int(size):
                raise ValueError(
                    f"modalities[{name!r}]={size!r}: feature size must be a positive int"
                )
        for field in ("d_model", "num_layers", "num_heads"):
            value = getattr(self, field)
            if not _is_positive_int(value):
                raise ValueError(f"{field}={value!r}: must be a positive int")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                "choose d_model as a multiple of num_heads"
            )
        mem_width = (len(self.modalities) - 1) * self.d_model
        if mem_width % self.num_heads:
            raise ValueError(
                f"(n-1)*d_model={mem_width} (mem transformer width) is not divisible by "
                f"num_heads={self.num_heads}; choose d_model as a multiple of num_heads"
            )
        for field in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{field}={value!r}: dropout must be a float in [0, 1)")

    @property
    def mem_layers(self) -> int:
        # The official code builds the mem transformers with layers=max(nlevels, 3).
        return max(self.num_layers, 3)


@dataclass
class MulTOutput:
    prediction: torch.Tensor  # (B,)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _linear(in_features: int, out_features: int) -> nn.Linear:
    # Xavier weights and zero bias, as the official transformer's Linear helper.
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """fairseq/tensor2tensor sinusoids for positions 1..length: (length, dim).

    Sines fill the first half of the features and cosines the second (not
    interleaved); an odd ``dim`` gets a zero last feature. Positions start at 1
    because the official embedding reserves 0 for padding.
    """
    half = dim // 2
    scale = math.log(10000) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -scale)
    angles = torch.arange(1, length + 1, device=device, dtype=torch.float32)[:, None] * freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)  # (length, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(dtype)


class TransformerLayer(nn.Module):
    """One pre-LayerNorm block: (cross-)attention, then a position-wise FFN."""

    def __init__(self, dim: int, config: MulTConfig):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, config.num_heads, dropout=config.attn_dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.fc1 = _linear(dim, 4 * dim)
        self.fc2 = _linear(4 * dim, dim)
        self.relu_dropout = config.relu_dropout
        self.res_dropout = config.res_dropout

    def forward(self, x: Tensor, key_pad: Tensor, source: Tensor | None = None) -> Tensor:
        # x: (B, Tq, dim) queries; source: (B, Tk, dim) keys/values, None for self-attention;
        # key_pad: (B, Tk) True on padded keys (torch's convention).
        q = self.attn_norm(x)
        # The official code normalises keys/values with the query's LayerNorm.
        kv = q if source is None else self.attn_norm(source)
        h, _ = self.attn(q, kv, kv, key_padding_mask=key_pad, need_weights=False)  # (B, Tq, dim)
        x = x + F.dropout(h, self.res_dropout, self.training)

        h = F.relu(self.fc1(self.ffn_norm(x)))  # (B, Tq, 4*dim)
        h = F.dropout(h, self.relu_dropout, self.training)
        h = self.fc2(h)  # (B, Tq, dim)
        return x + F.dropout(h, self.res_dropout, self.training)


class TransformerEncoder(nn.Module):
    """The official TransformerEncoder: crossmodal when given a source, else self-attention."""

    def __init__(self, dim: int, num_layers: int, config: MulTConfig):
        super().__init__()
        self.dim = dim
        self.embed_dropout = config.embed_dropout
        self.layers = nn.ModuleList(TransformerLayer(dim, config) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim)

    def _embed(self, x: Tensor) -> Tensor:
        # (B, T, dim) -> (B, T, dim): scale up so the positions do not swamp the content.
        pos = sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype)
        return F.dropout(math.sqrt(self.dim) * x + pos, self.embed_dropout, self.training)

    def forward(
        self, x: Tensor, mask: Tensor, source: Tensor | None = None, source_mask: Tensor | None = None
    ) -> Tensor:
        # x: (B, Tq, dim), mask: (B, Tq); source: (B, Tk, dim), source_mask: (B, Tk).
        x = self._embed(x)
        if source is None:
            key_pad = ~mask
        else:
            source, key_pad = self._embed(source), ~source_mask
        for layer in self.layers:
            x = layer(x, key_pad, source)
        return self.final_norm(x)  # (B, Tq, dim)


class MulT(nn.Module):
    """Multimodal Transformer over any n >= 2 modalities; see the module docstring."""

    def __init__(self, config: MulTConfig):
        super().__init__()
        self.config = config
        names, d = list(config.modalities), config.d_model
        # A modality already of width d is used as is, as in the official code.
        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(size, d, kernel_size=1, bias=False) for m, size in config.modalities.items() if size != d}
        )
        # crossmodal[target][source]: target queries attend to source keys/values.
        self.crossmodal = nn.ModuleDict(
            {
                t: nn.ModuleDict({s: TransformerEncoder(d, config.num_layers, config) for s in names if s != t})
                for t in names
            }
        )
        mem_width = (len(names) - 1) * d
        self.mem = nn.ModuleDict({t: TransformerEncoder(mem_width, config.mem_layers, config) for t in names})
        combined = len(names) * mem_width
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_layer = nn.Linear(combined, 1)

    def forward(self, features: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> MulTOutput:
        xs, ms = self._check_inputs(features, masks)
        summaries = []
        for t in self.config.modalities:
            # (B, T_t, d) per source, concatenated -> (B, T_t, (n-1)*d)
            h = torch.cat([enc(xs[t], ms[t], xs[s], ms[s]) for s, enc in self.crossmodal[t].items()], dim=-1)
            h = self.mem[t](h, ms[t])  # (B, T_t, (n-1)*d)
            summaries.append(_last_real_step(h, ms[t]))  # (B, (n-1)*d)
        last = torch.cat(summaries, dim=-1)  # (B, n*(n-1)*d)
        h = F.dropout(F.relu(self.proj1(last)), self.config.out_dropout, self.training)
        h = self.proj2(h) + last  # residual block of the official head
        return MulTOutput(prediction=self.out_layer(h).squeeze(-1))  # (B,)

    def _check_inputs(
        self, features: dict[str, Tensor], masks: dict[str, Tensor] | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Validate inputs; return projected features (B, T, d) and guarded masks (B, T)."""
        xs, ms, batch = {}, {}, None
        for m, size in self.config.modalities.items():
            if m not in features:
                raise ValueError(
                    f"modality {m!r} is missing from features (got {sorted(features)}); "
                    "MulT needs all modalities of its config in every batch"
                )
            x = features[m]
            if x.dim() != 3 or x.shape[1] == 0:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}; expected (B, T>=1, {size})")
            if x.shape[-1] != size:
                raise ValueError(f"features[{m!r}] has feature size {x.shape[-1]}; expected {size}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"features[{m!r}] has batch size {x.shape[0]}; other modalities have {batch}")
            batch = x.shape[0]
            mask = None if masks is None else masks.get(m)
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            elif mask.shape != x.shape[:2]:
                raise ValueError(f"masks[{m!r}] has shape {tuple(mask.shape)}; expected {tuple(x.shape[:2])}")
            mask = mask.bool()
            # Zero the padding so that any garbage (even NaN) there cannot leak through 0 * value.
            x = x.masked_fill(~mask[..., None], 0.0)
            if m in self.proj:
                x = self.proj[m](x.transpose(1, 2)).transpose(1, 2)  # (B, T, d)
            # No real step at all: count the (zeroed) step 0 as real, so no softmax is empty.
            empty = ~mask.any(dim=1)  # (B,)
            mask = torch.cat([mask[:, :1] | empty[:, None], mask[:, 1:]], dim=1)
            xs[m], ms[m] = x, mask
        return xs, ms


def _last_real_step(h: Tensor, mask: Tensor) -> Tensor:
    # h: (B, T, D), mask: (B, T) with at least one True per row -> (B, D)
    steps = torch.arange(h.shape[1], device=h.device)
    last = torch.where(mask, steps, -1).amax(dim=1)  # (B,) index of the last real step
    return h[torch.arange(h.shape[0], device=h.device), last]
