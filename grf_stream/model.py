"""Gated Recursive Fusion (GRF): modalities fused one after another into one context.

arXiv 2507.02985. Modality m has features X_m of shape (T_m, d_m); d = d_model.

    (1) P_m  = N_m(X_m) W_m + b_m [+ e_m]             projection, optional modality embedding
    (2) P^_m = Dropout(P_m + PE[0:T_m])                sinusoidal positional encoding
    (3) h_1  = MaskedMean_t(P^_m1)                     the context starts as the pooled first modality
    for each later modality m_k, k = 2..n (one fusion step, the same block weights every step):
    (4) s'   = DecA(tgt = h_{k-1}, mem = P^_k)         the context queries the modality
    (5) m'   = MaskedMean_t(DecB(tgt = P^_k, mem = h_{k-1}))   the modality queries the context
    (6) z_k  = sigmoid(W_z [s'; m'] + b_z)             update gate of the Gated Fusion Unit (GFU)
    (7) h~_k = tanh(W_h [s'; m'] + b_h)                candidate
    (8) h_k  = LayerNorm(Dropout((1 - z_k) * s' + z_k * h~_k))
    (9) y_k  = Head(h_k)                               a prediction after every step

Two variants for streams that run for minutes (chosen in `__init__` like the others):
    (3') h_0 = a learned context; the first modality is fused into it by (4)-(8) like every later
         one (`init: learned`), so a first step with no real row leaves h_0, not a zero context
    (8') h_k = (1 - z_k) * h_{k-1} + z_k * Dropout(h~_k)   (`gfu: keep`): z_k = 0 keeps h_{k-1}
         exactly. In (8) the carried term s' is the context already rewritten by attending to the
         new window, so no gate value can shut an uninformative step out; here one can.
    (6') z_k = clamp((sigmoid(W_z [s'; m'] + b_z) - f) / (1 - 2f), 0, 1)   (`gate_floor: f`): a gate
         that sigmoid leaves within f of 0 or 1 is shut or open exactly. A sigmoid never reaches 0,
         so without it every step of a live stream moves the context a little. A modality may have
         a floor of its own (`gate_floors`).

A read-out beside the head (`readout: r`, the transcript in a live stream):
    (10) y_k = (1 - lam) Head(h_k) + lam * rho_k,  rho_k = w_r . MaskedMean_t(X_r) + b_r, read from
         the latest window of modality r (rho_0, a weight of its own, before the first one). It
         holds the latest phrase as it was said until the next one, while the context also fuses
         every audio and video window between them; the two readings err differently, and their
         blend beats either (README, "Reading it"; trainer/readout.py fits it onto a trained GRF).

N_m is the identity, or with `feature_norm` a standardisation (X_m - mu_m) / sigma_m whose
statistics the trainer measures on the training data and the checkpoint keeps: raw extractor
output goes in at serving time, whatever its scale (MFCCs reach +-400, face geometry is near 1).

DecA and DecB are stacks of post-norm Transformer decoder layers. Padding (mask False) is masked
in every attention and every mean, so padding a sequence further never changes an output. In
training on a CPU their dropout masks are drawn from 16 random bits a value (grf_stream/dropout.py:
p rounded to a multiple of 2^-16, several times cheaper than torch's bernoulli_).

A context is a set of state tokens: one token (B, d) by default. The reproduction mode of the
authors' released code (`init: sequence`) starts from the whole first-modality sequence
(B, T, d) with its mask; every fusion step then pools the state back to one token.

`fuse_step` is the primitive and `forward` is a loop over it, so streaming and training run the
same code. Variants are chosen in `__init__` by building different sub-modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from grf_stream.dropout import with_cheap_dropout

INIT_MODES = ("pooled", "sequence", "learned")
GFU_MODES = ("attended", "keep")


@dataclass
class GRFConfig:
    """Architecture of a GRF model; a checkpoint stores it next to the weights."""

    modalities: dict[str, int] = field(default_factory=lambda: {"text": 300, "audio": 5, "vision": 20})
    """Modality name -> feature size d_m."""
    d_model: int = 64
    """Width d of the context and of every projected modality."""
    num_layers: int = 4
    """Decoder layers in each of DecA and DecB."""
    num_heads: int = 4
    """Attention heads; must divide d_model."""
    d_ffn: int = 256
    """Hidden width of the decoder feed-forward layers."""
    dropout: float = 0.2
    """Dropout in (2), (8), the decoder layers and the head."""
    share_block: bool = True
    """One fusion block for every step (GRF); False = one block per fused modality (released code)."""
    init: str = "pooled"
    """First state: 'pooled' mean of the first modality (3), its whole 'sequence' (released code), or a
    'learned' h_0 the first modality is fused into (3')."""
    gfu: str = "attended"
    """What the gate carries: 'attended' s' as in (8) (the paper), or 'keep' h_{k-1} itself (8')."""
    gate_floor: float = 0.0
    """f of (6'): gates the sigmoid puts within f of 0 (or 1) are exactly 0 (or 1); 0 = the paper's (6)."""
    gate_floors: dict[str, float] = field(default_factory=dict)
    """A modality's own f of (6') for its fusion steps, instead of gate_floor (e.g. a higher one for the
    audio and video windows of a live stream, which carry far less sentiment than a phrase)."""
    modality_embedding: bool = True
    """Add a learned e_m in (1) so the shared block knows what it is fusing (any-order fusion)."""
    order: list[str] | None = None
    """Default fusion order; None = the order of `modalities`."""
    aux_head: bool = False
    """A second head reads h_2, the state after the first fusion step (the released code's auxiliary loss)."""
    max_len: int = 10_000
    """Longest sequence a modality may have (positional-encoding table size)."""
    feature_norm: bool = False
    """Standardise each modality's raw features in (1) with statistics kept in the model (N_m)."""
    readout: str | None = None
    """r of (10): a modality whose latest window is also read out linearly into every prediction;
    None = the head alone (the paper)."""
    readout_weight: float = 0.5
    """lam of (10): the read-out's share of a prediction."""

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("modalities is empty: give at least one, e.g. {'text': 300}")
        for name, size in self.modalities.items():
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"modalities.{name}: feature size {size!r} must be a positive int")
        if self.d_model <= 0 or self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be a positive even number")
        if self.num_heads <= 0 or self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        if self.num_layers <= 0 or self.d_ffn <= 0:
            raise ValueError(f"num_layers={self.num_layers} and d_ffn={self.d_ffn} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.init not in INIT_MODES:
            raise ValueError(f"init={self.init!r} is not one of {INIT_MODES}")
        if self.gfu not in GFU_MODES:
            raise ValueError(f"gfu={self.gfu!r} is not one of {GFU_MODES}")
        floors = {"gate_floor": self.gate_floor} | {f"gate_floors.{m}": f for m, f in self.gate_floors.items()}
        for name, floor in floors.items():
            if not 0.0 <= floor < 0.5:
                raise ValueError(f"{name}={floor} must be in [0, 0.5)")
        unknown = sorted(set(self.gate_floors) - set(self.modalities))
        if unknown:
            raise ValueError(f"gate_floors names {unknown}, which is not one of the modalities {list(self.modalities)}")
        if self.readout is not None and self.readout not in self.modalities:
            raise ValueError(f"readout={self.readout!r} is not one of the modalities {list(self.modalities)}")
        if not 0.0 < self.readout_weight <= 1.0:
            raise ValueError(f"readout_weight={self.readout_weight} must be in (0, 1]")
        if self.init == "learned" and not self.share_block:
            raise ValueError("init=learned fuses the first modality with the block too: it needs share_block=true")
        self.order = list(self.order) if self.order is not None else list(self.modalities)
        if sorted(self.order) != sorted(self.modalities):
            raise ValueError(f"order {self.order} must list each of {list(self.modalities)} exactly once")
        if self.aux_head and len(self.order) < 2:
            raise ValueError("aux_head reads the state after the first fusion step: it needs two modalities")

    def floor(self, modality: str) -> float:
        """f of (6') for the fusion steps of `modality`."""
        return self.gate_floors.get(modality, self.gate_floor)


@dataclass
class GRFOutput:
    """Everything one pass produces; n = number of modalities fused."""

    prediction: Tensor  # (B,) y_n, after the last step
    step_predictions: Tensor  # (B, n) y_k after each modality in fusion order; y_1 reads h_1
    contexts: Tensor  # (B, n, d) h_k after each modality (h_1 pooled in `init: sequence` mode)
    gates: Tensor  # (B, n-1, d) update gate z_k of each fusion step
    aux_prediction: Tensor | None = None  # (B,) the auxiliary head on h_2, when configured
    gate_sigmoids: Tensor | None = None  # (B, n-1, d) the sigmoid of (6) before a floor (6'): how shut a
    # shut gate is (z = 0 says only that it is under the floor)


# ---------------------------------------------------------------------------------------------
# helpers


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over time of the real steps: x (B, T, d), mask (B, T) -> (B, d); 0 where none is real."""
    weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    total = (x * weights).sum(dim=1)  # (B, d)
    return total / weights.sum(dim=1).clamp(min=1.0)


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """Padded steps as zeros: whatever they held (even NaN) must not reach a real output, and a
    masked attention weight of 0 times NaN is still NaN."""
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


def sinusoidal_table(length: int, d: int) -> Tensor:
    """The Transformer's sinusoidal positional encoding, (length, d)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def attendable(mask: Tensor) -> Tensor:
    """Key mask that attention can use: a row with no real step gets one, so softmax stays finite.

    Those samples' results are discarded by the caller (their context is left unchanged).
    """
    empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | (empty & first)


def real_steps(mask: Tensor) -> Tensor:
    """(B, T) -> (B,): one past each sample's last real step, at least 1 (what trimming may keep)."""
    steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (T,)
    return (mask * steps).amax(dim=1).clamp(min=1)


def in_length_groups(fn: Callable[..., tuple[Tensor, ...]], rows: int, state: Tensor, state_mask: Tensor,
                     p: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """fn(state, state_mask, p, mask) -> (B, d) tensors, run on sub-batches of about `rows` samples of
    similar length, each cut to its longest real step: the result of one call on the whole batch
    (samples are independent, padding is masked), with far less padding attended. The lengths are
    read on the host, so this is for training only (the streaming primitives stay sync-free)."""
    steps, state_steps = real_steps(mask), real_steps(state_mask)  # (B,)
    order = torch.argsort(steps)  # (B,) shortest first
    groups = order.tensor_split(math.ceil(len(order) / rows))
    cuts = torch.stack([torch.stack([steps[g].max(), state_steps[g].max()]) for g in groups]).tolist()
    outputs = zip(*[fn(state[g, :s], state_mask[g, :s], p[g, :t], mask[g, :t]) for g, (t, s) in zip(groups, cuts)])
    back = torch.argsort(order)  # (B,) batch order again
    return tuple(torch.cat(output)[back] for output in outputs)


def update_gate(logits: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """(6) or, with a floor f > 0, (6'): the gate z, the sigmoid stretched so that it reaches 0 and 1
    exactly, and the sigmoid itself."""
    sigmoid = torch.sigmoid(logits)
    return (((sigmoid - floor) / (1 - 2 * floor)).clamp(0.0, 1.0) if floor > 0 else sigmoid), sigmoid


def decoder_stack(config: GRFConfig) -> nn.TransformerDecoder:
    """L post-norm decoder layers: self-attention, cross-attention, GELU feed-forward."""
    layer = nn.TransformerDecoderLayer(
        d_model=config.d_model,
        nhead=config.num_heads,
        dim_feedforward=config.d_ffn,
        dropout=config.dropout,
        activation="gelu",
        batch_first=True,
    )
    # enable_nested_tensor does not exist for decoders; each layer is deep-copied (own weights).
    return nn.TransformerDecoder(with_cheap_dropout(layer), num_layers=config.num_layers)


# ---------------------------------------------------------------------------------------------
# blocks


class FeatureNorm(nn.Module):
    """N_m of (1): (x - mean) / std with per-feature statistics set once from training data."""

    def __init__(self, d_in: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))

    @torch.no_grad()
    def set_statistics(self, rows: Tensor) -> None:
        """Measure mean and std over real rows (N, d_in); a constant feature keeps std 1."""
        std = rows.std(dim=0, unbiased=False)
        self.mean.copy_(rows.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ModalityEncoder(nn.Module):
    """Equations (1)-(2): project one modality to d, mark it, add positions."""

    def __init__(self, d_in: int, config: GRFConfig):
        super().__init__()
        self.norm = FeatureNorm(d_in) if config.feature_norm else nn.Identity()
        self.proj = nn.Linear(d_in, config.d_model)
        # Small random start so modalities differ from the first step; None when disabled.
        self.embedding = (
            nn.Parameter(0.02 * torch.randn(config.d_model)) if config.modality_embedding else None
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        p = self.proj(self.norm(x))  # (1) (B, T, d)
        if self.embedding is not None:
            p = p + self.embedding  # (1) + e_m
        return self.dropout(p + positions)  # (2) (B, T, d)


class GatedFusionUnit(nn.Module):
    """Equations (6)-(8): a GRU-like gate between the attended state s' and the new evidence m'."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.gate = nn.Linear(2 * config.d_model, config.d_model)
        self.candidate = nn.Linear(2 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model)
        self.floors = {m: config.floor(m) for m in config.modalities}

    def forward(self, previous: Tensor, s: Tensor, m: Tensor, modality: str) -> tuple[Tensor, Tensor, Tensor]:
        sm = torch.cat([s, m], dim=-1)  # (B, 2d)
        z, sigmoid = update_gate(self.gate(sm), self.floors[modality])  # (6') (B, d); (6) without a floor
        candidate = torch.tanh(self.candidate(sm))  # (7) candidate (B, d)
        h = self.norm(self.dropout((1 - z) * s + z * candidate))  # (8) (B, d); `previous` is not carried
        return h, z, sigmoid


class KeepingGatedFusionUnit(nn.Module):
    """Equation (8'): the gate mixes the previous context itself with the candidate, so z = 0 keeps it.

    No LayerNorm: tanh bounds the candidate, and a convex mix of bounded contexts stays bounded.
    """

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.gate = nn.Linear(2 * config.d_model, config.d_model)
        self.candidate = nn.Linear(2 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.floors = {m: config.floor(m) for m in config.modalities}

    def forward(self, previous: Tensor, s: Tensor, m: Tensor, modality: str) -> tuple[Tensor, Tensor, Tensor]:
        sm = torch.cat([s, m], dim=-1)  # (B, 2d)
        z, sigmoid = update_gate(self.gate(sm), self.floors[modality])  # (6') (B, d); (6) without a floor
        candidate = self.dropout(torch.tanh(self.candidate(sm)))  # (7) candidate (B, d)
        return (1 - z) * previous + z * candidate, z, sigmoid  # (8') (B, d)


class FusionBlock(nn.Module):
    """Equations (4)-(8): one fusion step, state tokens (B, S, d) + modality (B, T, d) -> (B, d), with the
    gate z and its sigmoid before a floor (B, d).

    In training, a batch of more than `group_rows` samples is fused in sub-batches of similar
    length, each cut to its longest real step (`in_length_groups`): attention costs T^2, and a
    padded batch pays for its longest sample in every row. The result is the same.
    """

    group_rows = 4
    """Samples per length group in training (0 = never group)."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.dec_a = decoder_stack(config)
        self.dec_b = decoder_stack(config)
        self.gfu = KeepingGatedFusionUnit(config) if config.gfu == "keep" else GatedFusionUnit(config)

    def forward(self, state: Tensor, state_mask: Tensor, p: Tensor, mask: Tensor,
                modality: str) -> tuple[Tensor, Tensor, Tensor]:
        if self.training and 0 < self.group_rows < p.shape[0]:
            return in_length_groups(partial(self.fuse, modality=modality), self.group_rows, state, state_mask, p, mask)
        return self.fuse(state, state_mask, p, mask, modality)

    def fuse(self, state: Tensor, state_mask: Tensor, p: Tensor, mask: Tensor,
             modality: str) -> tuple[Tensor, Tensor, Tensor]:
        state_pad, pad = ~state_mask, ~attendable(mask)
        s = self.dec_a(state, p, tgt_key_padding_mask=state_pad, memory_key_padding_mask=pad)  # (4)
        s = masked_mean(s, state_mask)  # (B, d); a no-op for the one-token context
        m = self.dec_b(p, state, tgt_key_padding_mask=pad, memory_key_padding_mask=state_pad)  # (5)
        m = masked_mean(m, mask)  # (5) (B, d)
        return self.gfu(masked_mean(state, state_mask), s, m, modality)  # (6)-(8)


class SharedFusion(nn.Module):
    """GRF: ONE fusion block, the same weights at every step, in any order."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.block = FusionBlock(config)

    def forward(self, state, state_mask, p, mask, modality: str) -> tuple[Tensor, Tensor, Tensor]:
        return self.block(state, state_mask, p, mask, modality)


class PerModalityFusion(nn.Module):
    """The released code: one block per fusion step, i.e. per modality of the fixed order."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.blocks = nn.ModuleDict({name: FusionBlock(config) for name in config.order[1:]})

    def forward(self, state, state_mask, p, mask, modality: str) -> tuple[Tensor, Tensor, Tensor]:
        if modality not in self.blocks:
            raise ValueError(
                f"share_block=False has fusion blocks for {list(self.blocks)} only (the fixed order "
                f"after its first modality); cannot fuse {modality!r} as a later step"
            )
        return self.blocks[modality](state, state_mask, p, mask, modality)


# A start turns the first projected modality p (B, T, d) with its mask into the first context;
# `fuse(context, p, mask) -> context` is the fusion step (4)-(8), for the start that needs it.
FuseFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class PooledStart(nn.Module):
    """(3): the context starts as the masked mean of the first modality, one token."""

    def forward(self, p: Tensor, mask: Tensor, fuse: FuseFn) -> Tensor:
        return masked_mean(p, mask)  # (3) (B, d)


class SequenceStart(nn.Module):
    """The released code: the whole first-modality sequence is the first state."""

    def forward(self, p: Tensor, mask: Tensor, fuse: FuseFn) -> Tensor:
        return p  # (B, T, d); its mask travels with it as `context_mask`


class LearnedStart(nn.Module):
    """(3'): a learned context h_0; the first modality is fused into it like every later one."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.h0 = nn.Parameter(0.02 * torch.randn(config.d_model))

    def forward(self, p: Tensor, mask: Tensor, fuse: FuseFn) -> Tensor:
        return fuse(self.h0.expand(p.shape[0], -1), p, mask)  # (3') then (4)-(8) (B, d)


class Head(nn.Module):
    """(9): the released code's regression head, d -> d/2 -> 1."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.d_model, config.d_model // 2),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.d_model // 2, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).squeeze(-1)  # (9) (B,)


class Readout(nn.Module):
    """(10): a linear read-out of the latest window of one modality, blended into the head's prediction."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.modality, self.weight = config.readout, config.readout_weight
        self.linear = nn.Linear(config.modalities[config.readout], 1)
        self.start = nn.Parameter(torch.zeros(()))  # rho_0

    def first(self, batch: int) -> Tensor:
        """(B,) rho_0: what is read out before any window of the modality."""
        return self.start.expand(batch)

    def after(self, previous: Tensor, x: Tensor, mask: Tensor, modality: str) -> Tensor:
        """(B,) rho after a window (x zero-padded): read from it if it is of the modality and has a
        real step, else `previous`."""
        if modality != self.modality:
            return previous
        return torch.where(mask.any(dim=1), self.linear(masked_mean(x, mask)).squeeze(-1), previous)

    def blend(self, head: Tensor, rho: Tensor) -> Tensor:
        return (1 - self.weight) * head + self.weight * rho


# ---------------------------------------------------------------------------------------------
# the model


class GRF(nn.Module):
    """Gated Recursive Fusion over any number of modalities; see the module docstring."""

    def __init__(self, config: GRFConfig):
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({m: ModalityEncoder(d, config) for m, d in config.modalities.items()})
        if config.init == "learned":
            self.start = LearnedStart(config)
        else:
            self.start = PooledStart() if config.init == "pooled" else SequenceStart()
        self.fusion = SharedFusion(config) if config.share_block else PerModalityFusion(config)
        self.head = Head(config)
        self.aux_head = Head(config) if config.aux_head else None
        self.readout = Readout(config) if config.readout is not None else None
        # Not persistent: it is derived, so checkpoints hold only learned weights.
        self.register_buffer("positions", sinusoidal_table(config.max_len, config.d_model), persistent=False)

    # -- the streaming primitives -------------------------------------------------------------

    def encode(self, x: Tensor, modality: str) -> Tensor:
        """(1)-(2) for one modality: (B, T, d_m) -> (B, T, d)."""
        self._check_features(x, modality)
        return self.encoders[modality](x, self.positions[: x.shape[1]])

    def init_context(self, x: Tensor, mask: Tensor | None, modality: str) -> Tensor:
        """(1)-(3): the first modality becomes the context, (B, d) (or (B, T, d) in sequence mode)."""
        def fuse(context: Tensor, p: Tensor, mask: Tensor) -> Tensor:
            return self._fuse_encoded(context, None, p, mask, modality)[0]

        mask = self._mask(x, mask)
        return self.start(self.encode(zero_padding(x, mask), modality), mask, fuse)

    def fuse_step(
        self, context: Tensor, x: Tensor, mask: Tensor | None, modality: str, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(4)-(8): fuse one modality window into the context -> (new context (B, d), gate z (B, d)).

        A sample whose window has no real step keeps its context, and its gate is 0.
        """
        return self._fuse_window(context, x, mask, modality, context_mask)[:2]

    def read_out(self, rho: Tensor | None, x: Tensor, mask: Tensor | None, modality: str) -> Tensor | None:
        """(10)'s rho (B,) after a window, from the one before it (None: before any window, rho_0);
        None for a model without a read-out."""
        if self.readout is None:
            return None
        mask = self._mask(x, mask)
        rho = self.readout.first(x.shape[0]) if rho is None else rho
        return self.readout.after(rho, zero_padding(x, mask), mask, modality)

    def predict(self, context: Tensor, context_mask: Tensor | None = None, rho: Tensor | None = None) -> Tensor:
        """(9), (10) with a read-out (rho from `read_out`): the sentiment read from a context, (B,)."""
        state, state_mask = self._state_tokens(context, context_mask)
        y = self.head(masked_mean(state, state_mask))
        if self.readout is None:
            return y
        return self.readout.blend(y, rho if rho is not None else self.readout.first(len(y)))

    # -- the whole pass ----------------------------------------------------------------------

    def forward(
        self,
        features: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        order: list[str] | None = None,
    ) -> GRFOutput:
        """Fuse the modalities present in `features` in `order` (default: config.order)."""
        masks = masks or {}
        return self.fuse([(m, features[m], masks.get(m)) for m in self._steps(features, order)])

    def fuse(self, steps: list[tuple[str, Tensor, Tensor | None]]) -> GRFOutput:
        """Fuse (modality, features (B, T, d_m), mask (B, T) or None) steps in the order given.

        A modality may come back as several steps (windows of a stream); the first step starts
        the context (1)-(3), every later one is a fusion step (4)-(8), each followed by (9).
        """
        (first, x, mask), *rest = steps
        context = self.init_context(x, mask, first)
        # Only a sequence-mode context (B, T, d) has padding of its own to mask.
        context_mask = self._mask(x, mask) if context.dim() == 3 else None
        contexts, gates, sigmoids = [masked_mean(*self._state_tokens(context, context_mask))], [], []
        rhos = [self.read_out(None, x, mask, first)]
        for modality, x, mask in rest:
            context, gate, sigmoid = self._fuse_window(context, x, mask, modality, context_mask)
            context_mask = None  # after a fusion step the context is one token
            contexts.append(context)
            gates.append(gate)
            sigmoids.append(sigmoid)
            rhos.append(self.read_out(rhos[-1], x, mask, modality))
        contexts = torch.stack(contexts, dim=1)  # (B, n, d)
        step_predictions = self.head(contexts)  # (9) (B, n)
        if self.readout is not None:
            step_predictions = self.readout.blend(step_predictions, torch.stack(rhos, dim=1))  # (10)
        after_first_fusion = contexts[:, min(1, contexts.shape[1] - 1)]  # h_2 (h_1 if nothing was fused)
        aux = self.aux_head(after_first_fusion) if self.aux_head is not None else None
        batch, d = contexts.shape[0], contexts.shape[-1]
        gates, sigmoids = (torch.stack(g, dim=1) if g else contexts.new_zeros(batch, 0, d)  # (B, n-1, d)
                           for g in (gates, sigmoids))
        return GRFOutput(step_predictions[:, -1], step_predictions, contexts, gates, aux, sigmoids)

    # -- checks and plumbing -----------------------------------------------------------------

    def _fuse_window(
        self, context: Tensor, x: Tensor, mask: Tensor | None, modality: str, context_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """fuse_step, and the gate's sigmoid before a floor."""
        mask = self._mask(x, mask)
        return self._fuse_encoded(context, context_mask, self.encode(zero_padding(x, mask), modality), mask,
                                  modality)

    def _fuse_encoded(
        self, context: Tensor, context_mask: Tensor | None, p: Tensor, mask: Tensor, modality: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(4)-(8) on an encoded window p (B, T, d); a sample with no real step keeps its context, and its
        gate and sigmoid are 0."""
        state, state_mask = self._state_tokens(context, context_mask)
        h, z, sigmoid = self.fusion(state, state_mask, p, mask, modality)
        has_data = mask.any(dim=1, keepdim=True)  # (B, 1)
        previous = masked_mean(state, state_mask)  # (B, d)
        return (torch.where(has_data, h, previous), torch.where(has_data, z, torch.zeros_like(z)),
                torch.where(has_data, sigmoid, torch.zeros_like(sigmoid)))

    def _steps(self, features: dict[str, Tensor], order: list[str] | None) -> list[str]:
        order = list(order) if order is not None else self.config.order
        unknown = [m for m in [*features, *order] if m not in self.config.modalities]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}: this model fuses {list(self.config.modalities)}")
        if len(set(order)) != len(order):
            raise ValueError(f"order {order} names a modality twice")
        steps = [m for m in order if m in features]
        if not steps:
            raise ValueError(f"no modality of the order {order} is in features {list(features)}")
        return steps

    def _check_features(self, x: Tensor, modality: str) -> None:
        if modality not in self.config.modalities:
            raise ValueError(f"unknown modality {modality!r}: this model fuses {list(self.config.modalities)}")
        expected = self.config.modalities[modality]
        if x.dim() != 3 or x.shape[-1] != expected:
            raise ValueError(f"{modality} features have shape {tuple(x.shape)}: expected (B, T, {expected})")
        if not 1 <= x.shape[1] <= self.config.max_len:
            raise ValueError(f"{modality} has {x.shape[1]} steps: send 1 to max_len={self.config.max_len}")

    @staticmethod
    def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask {tuple(mask.shape)} {mask.dtype}: expected bool {tuple(x.shape[:2])}")
        return mask

    @staticmethod
    def _state_tokens(context: Tensor, context_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """A context as state tokens (B, S, d) with their mask: a (B, d) context is one token."""
        tokens = context.unsqueeze(1) if context.dim() == 2 else context
        mask = context_mask if context_mask is not None else tokens.new_ones(tokens.shape[:2], dtype=torch.bool)
        return tokens, mask
