"""Analytic FLOPs against torch's own count of the matmuls a forward pass runs."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from grf_stream.baselines.mult import MulT, MulTConfig
from grf_stream.flops import grf_flops, mult_flops
from grf_stream.model import GRF, GRFConfig


def counted_flops(model, lengths, sizes) -> int:
    """FLOPs torch counts for one sample. The math attention kernel shows QK^T and AV as bmm,
    which the fused CPU kernels hide from the counter."""
    features = {m: torch.randn(1, lengths[m], sizes[m]) for m in lengths}
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model.eval()(features)
    return counter.get_total_flops()


@pytest.mark.parametrize("variant", [{}, {"share_block": False, "init": "sequence"}], ids=["grf", "released"])
def test_grf_flops_equal_the_counted_matmuls(variant):
    config = GRFConfig(**variant)
    lengths = {"text": 50, "audio": 37, "vision": 23}
    assert grf_flops(config, lengths) == counted_flops(GRF(config), lengths, config.modalities)


@pytest.mark.parametrize("n", [2, 4])
def test_mult_flops_equal_the_counted_matmuls(n):
    config = MulTConfig(modalities={f"m{i}": 8 + i for i in range(n)}, d_model=16, num_layers=2, num_heads=4)
    lengths = {f"m{i}": 10 + 3 * i for i in range(n)}
    assert mult_flops(config, lengths) == counted_flops(MulT(config), lengths, config.modalities)


def test_grf_flops_grow_linearly_and_mult_flops_quadratically():
    def both(n):
        sizes, lengths = {f"m{i}": 32 for i in range(n)}, {f"m{i}": 50 for i in range(n)}
        mult = MulTConfig(modalities=sizes, d_model=64, num_heads=4)
        return grf_flops(GRFConfig(modalities=sizes), lengths), mult_flops(mult, lengths)

    (g4, m4), (g8, m8), (g16, m16) = both(4), both(8), both(16)
    assert g16 - g8 == pytest.approx(2 * (g8 - g4), rel=1e-9)  # equal cost per added modality
    assert m8 / m4 > 3 and m16 / m8 > 3


def test_mult_flops_match_a_hand_count():
    # n = 2, d = 4, 1 crossmodal layer, mem max(1, 3) = 3 layers of width 4, T = 2 everywhere.
    config = MulTConfig(modalities={"a": 3, "b": 4}, d_model=4, num_layers=1, num_heads=2)
    # Projection of a only (b already has width 4): 2*2*3*4 = 48.
    # One attention layer, w = 4, T = 2: proj 2*16*(4+4) = 256, scores 4*2*2*4 = 64, ffn 4*2*4*16 = 512.
    layer = 256 + 64 + 512
    head = 2 * (2 * 8 * 8 + 8)  # C = 2*1*4 = 8
    expected = 48 + 2 * (1 * layer + 3 * layer) + head
    assert mult_flops(config, {"a": 2, "b": 2}) == expected
