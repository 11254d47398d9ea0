"""Analytic forward FLOPs (2 x multiply-adds of every matmul) of one sample.

Element-wise work (softmax, norms, activations) is left out: it is a few percent at these sizes,
and leaving it out keeps the counts comparable with `torch.utils.flop_counter.FlopCounterMode`,
which the tests check them against.
"""

from __future__ import annotations

from grf_stream.baselines.mult import MulTConfig
from grf_stream.model import GRFConfig


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def attention_flops(n_query: int, n_key: int, d: int) -> int:
    """Multi-head attention: Q, K, V and output projections, QK^T and AV (heads split d)."""
    projections = linear_flops(n_query, d, d) * 2 + linear_flops(n_key, d, 2 * d)
    return projections + 2 * (2 * n_query * n_key * d)


def feed_forward_flops(tokens: int, d: int, d_ffn: int) -> int:
    return linear_flops(tokens, d, d_ffn) + linear_flops(tokens, d_ffn, d)


def decoder_layer_flops(n_tgt: int, n_mem: int, d: int, d_ffn: int) -> int:
    """Self-attention over the target, cross-attention into the memory, feed-forward."""
    return attention_flops(n_tgt, n_tgt, d) + attention_flops(n_tgt, n_mem, d) + feed_forward_flops(n_tgt, d, d_ffn)


def grf_flops(config: GRFConfig, lengths: dict[str, int]) -> int:
    """FLOPs of `GRF.forward` on one sample with these sequence lengths, in config.order."""
    d, f, layers = config.d_model, config.d_ffn, config.num_layers
    order = [m for m in config.order if m in lengths]
    total = sum(linear_flops(lengths[m], config.modalities[m], d) for m in order)  # (1)
    state = lengths[order[0]] if config.init == "sequence" else 1
    for m in order[1:]:
        t = lengths[m]
        total += layers * decoder_layer_flops(state, t, d, f)  # (4) DecA: the state queries
        total += layers * decoder_layer_flops(t, state, d, f)  # (5) DecB: the modality queries
        total += 2 * linear_flops(1, 2 * d, d)  # (6)-(7) gate and candidate
        state = 1
    head = linear_flops(1, d, d // 2) + linear_flops(1, d // 2, 1)
    return total + len(order) * head  # (9) a prediction after every step


def mult_flops(config: MulTConfig, lengths: dict[str, int]) -> int:
    """FLOPs of `MulT.forward` on one sample: n(n-1) crossmodal and n mem transformers, the head."""
    d, n = config.d_model, len(config.modalities)
    mem_width = (n - 1) * d

    def layer(t_query: int, t_key: int, width: int) -> int:  # pre-norm block, FFN of 4 x width
        return attention_flops(t_query, t_key, width) + feed_forward_flops(t_query, width, 4 * width)

    # Conv1d(kernel 1) projections; a modality already d wide is used as is.
    total = sum(linear_flops(lengths[m], size, d) for m, size in config.modalities.items() if size != d)
    for target in config.modalities:
        t = lengths[target]
        total += sum(config.num_layers * layer(t, lengths[s], d) for s in config.modalities if s != target)
        total += config.mem_layers * layer(t, t, mem_width)  # the target's self-attention "mem"
    combined = n * mem_width
    return total + 2 * linear_flops(1, combined, combined) + linear_flops(1, combined, 1)  # residual head
