"""The GRF model: equations, masking, streaming equivalence, variants, pinned numerics."""

import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from grf_stream.config import load_config
from grf_stream.model import GRF, FusionBlock, GRFConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
SIZES = {"text": 300, "audio": 5, "vision": 20}
LENGTHS = {"text": 50, "audio": 37, "vision": 23}


def make_model(seed: int = 0, **overrides) -> GRF:
    torch.manual_seed(seed)
    config = GRFConfig(**{"modalities": dict(SIZES), **overrides})
    return GRF(config).eval()


def make_inputs(sizes=SIZES, lengths=LENGTHS, batch=3, seed=1):
    """Random features with a different number of real steps per sample (the rest masked)."""
    g = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for name, size in sizes.items():
        t = lengths[name]
        features[name] = torch.randn(batch, t, size, generator=g)
        real = torch.randint(1, t + 1, (batch,), generator=g)
        real[0] = t  # one sample uses every step
        masks[name] = torch.arange(t)[None, :] < real[:, None]
    return features, masks


def pad(features, masks, extra: int, seed=2):
    """Append `extra` masked steps of garbage to every modality."""
    g = torch.Generator().manual_seed(seed)
    padded_f, padded_m = {}, {}
    for name, x in features.items():
        b, _, d = x.shape
        padded_f[name] = torch.cat([x, 100 * torch.randn(b, extra, d, generator=g)], dim=1)
        padded_m[name] = torch.cat([masks[name], torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    return padded_f, padded_m


def stream(model: GRF, features, masks, order):
    """Feed one modality at a time through the streaming primitives, as a session does."""
    first, *rest = order
    context = model.init_context(features[first], masks[first], first)
    context_mask = masks[first] if model.config.init == "sequence" else None
    predictions = [model.predict(context, context_mask)]
    gates = []
    for name in rest:
        context, gate = model.fuse_step(context, features[name], masks[name], name, context_mask)
        context_mask = None
        predictions.append(model.predict(context))
        gates.append(gate)
    return torch.stack(predictions, dim=1), torch.stack(gates, dim=1), context


RELEASED = dict(share_block=False, init="sequence", modality_embedding=False, aux_head=True)
LIVE = dict(init="learned", gfu="keep")  # the variant for long streams


# -- the released code's size ----------------------------------------------------------------


def test_reproduction_mode_has_the_released_parameter_count():
    config = load_config(GRFConfig, CONFIGS / "grf_released.yaml")
    assert sum(p.numel() for p in GRF(config).parameters()) == 1_126_530


def test_shared_block_is_one_block_whose_size_does_not_grow_with_modalities():
    def count(n):
        model = GRF(GRFConfig(modalities={f"m{i}": 32 for i in range(n)}))
        blocks = [m for m in model.modules() if isinstance(m, FusionBlock)]
        assert blocks == [model.fusion.block]
        return sum(p.numel() for p in model.parameters())

    per_modality = 32 * 64 + 64 + 64  # projection weight, bias, modality embedding
    assert count(16) - count(2) == 14 * per_modality


# -- shapes and any number of modalities -------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_any_number_of_modalities_with_their_own_sizes_and_lengths(n):
    sizes = {f"m{i}": 3 + 7 * i for i in range(n)}
    lengths = {f"m{i}": 2 + 3 * i for i in range(n)}
    model = GRF(GRFConfig(modalities=sizes, d_model=32, num_layers=1, num_heads=2, d_ffn=64)).eval()
    out = model(*make_inputs(sizes, lengths, batch=4))
    assert out.prediction.shape == (4,)
    assert out.step_predictions.shape == (4, n)
    assert out.contexts.shape == (4, n, 32)
    assert out.gates.shape == (4, n - 1, 32)
    assert torch.isfinite(out.step_predictions).all()
    assert ((out.gates >= 0) & (out.gates <= 1)).all()
    assert_close(out.prediction, out.step_predictions[:, -1])


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, RELEASED, LIVE], ids=["grf", "released", "live"])
def test_padding_further_never_changes_any_output(variant):
    model = make_model(**variant)
    features, masks = make_inputs()
    out = model(features, masks)
    padded = model(*pad(features, masks, extra=17))
    assert_close(padded.step_predictions, out.step_predictions)
    assert_close(padded.contexts, out.contexts)
    assert_close(padded.gates, out.gates)


@pytest.mark.parametrize("variant", [{}, RELEASED, LIVE], ids=["grf", "released", "live"])
def test_nan_or_inf_in_padded_steps_never_reaches_an_output(variant):
    model = make_model(**variant)
    features, masks = make_inputs()
    out = model(features, masks)
    padded, padded_masks = pad(features, masks, extra=5)
    poisoned = {m: torch.where(padded_masks[m].unsqueeze(-1), x, torch.tensor(float("nan"))) for m, x in padded.items()}
    poisoned["audio"][:, -1] = float("inf")
    assert_close(model(poisoned, padded_masks).step_predictions, out.step_predictions)


def test_a_sample_without_data_for_a_modality_keeps_its_context():
    model = make_model()
    features, masks = make_inputs()
    masks["audio"][1] = False  # sample 1 has no audio at all
    out = model(features, masks)
    assert torch.isfinite(out.contexts).all()
    assert_close(out.contexts[1, 1], out.contexts[1, 0])  # the audio step changed nothing
    assert (out.gates[1, 0] == 0).all()
    alone = model({k: v[:1] for k, v in features.items()}, {k: v[:1] for k, v in masks.items()})
    assert_close(alone.step_predictions, out.step_predictions[:1])  # the others are unaffected


def test_feature_norm_standardises_raw_features_with_statistics_kept_in_the_checkpoint():
    model = make_model(feature_norm=True)
    features, masks = make_inputs()
    scaled = {m: 300 * x + 40 for m, x in features.items()}  # raw extractor scale, e.g. MFCCs
    for m, encoder in model.encoders.items():
        encoder.norm.set_statistics(scaled[m][masks[m]])
    normalised = encoder.norm(scaled["vision"][masks["vision"]])
    assert_close(normalised.mean(0), torch.zeros(20), atol=1e-4, rtol=0)
    assert_close(normalised.std(0, unbiased=False), torch.ones(20), atol=1e-4, rtol=0)
    # Standardising is affine, so the same model on standardised inputs gives the same outputs.
    plain = make_model()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith((".norm.mean", ".norm.std"))})
    standardised = {m: model.encoders[m].norm(x) for m, x in scaled.items()}
    assert_close(model(scaled, masks).step_predictions, plain(standardised, masks).step_predictions)
    norm_keys = {k for k in model.state_dict() if k.startswith("encoders.") and ".norm." in k}
    assert norm_keys == {f"encoders.{m}.norm.{s}" for m in SIZES for s in ("mean", "std")}
    padded = model(*pad(scaled, masks, extra=5))
    assert_close(padded.step_predictions, model(scaled, masks).step_predictions)


def test_masks_default_to_all_real():
    model = make_model()
    features, _ = make_inputs()
    full = {k: torch.ones(x.shape[:2], dtype=torch.bool) for k, x in features.items()}
    assert_close(model(features).step_predictions, model(features, full).step_predictions)


# -- streaming equals the whole pass -----------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, LIVE], ids=["grf", "live"])
@pytest.mark.parametrize("order", [["text", "audio", "vision"], ["vision", "text", "audio"]])
def test_streaming_one_step_at_a_time_equals_forward(order, variant):
    model = make_model(**variant)
    features, masks = make_inputs()
    out = model(features, masks, order=order)
    predictions, gates, context = stream(model, features, masks, order)
    assert_close(predictions, out.step_predictions)
    assert_close(gates, out.gates)
    assert_close(context, out.contexts[:, -1])


def test_streaming_equals_forward_in_reproduction_mode():
    model = make_model(order=["text", "vision", "audio"], **RELEASED)
    features, masks = make_inputs()
    out = model(features, masks)
    predictions, gates, _ = stream(model, features, masks, ["text", "vision", "audio"])
    assert_close(predictions, out.step_predictions)
    assert_close(gates, out.gates)


def test_missing_modalities_are_skipped():
    model = make_model()
    features, masks = make_inputs()
    without_audio = {k: v for k, v in features.items() if k != "audio"}
    out = model(without_audio, masks)
    predictions, _, _ = stream(model, features, masks, ["text", "vision"])
    assert out.step_predictions.shape == (3, 2)
    assert_close(out.step_predictions, predictions)


def test_fusion_order_matters_and_defaults_to_the_config():
    model = make_model()
    features, masks = make_inputs()
    default = model(features, masks).prediction
    assert_close(default, model(features, masks, order=["text", "audio", "vision"]).prediction)
    assert not torch.allclose(default, model(features, masks, order=["audio", "vision", "text"]).prediction)


# -- variants ----------------------------------------------------------------------------------


def test_aux_head_reads_the_state_after_the_first_fusion_step():
    model = make_model(**RELEASED)
    features, masks = make_inputs()
    out = model(features, masks)
    assert_close(out.aux_prediction, model.aux_head(out.contexts[:, 1]))
    assert make_model()(features, masks).aux_prediction is None


def test_per_step_blocks_refuse_a_modality_outside_their_fixed_order():
    model = make_model(order=["text", "vision", "audio"], **RELEASED)
    features, masks = make_inputs()
    with pytest.raises(ValueError, match="cannot fuse 'text' as a later step"):
        model(features, masks, order=["audio", "text", "vision"])


# -- the live variant: a learned h_0 and a gate that can keep the context -------------------------


def test_keep_gfu_with_the_gate_shut_returns_the_previous_context_bit_for_bit():
    model = make_model(**LIVE)
    features, masks = make_inputs()
    context = model.init_context(features["text"], masks["text"], "text")
    with torch.no_grad():
        model.fusion.block.gfu.gate.weight.zero_()
        model.fusion.block.gfu.gate.bias.fill_(-1e4)  # sigmoid(-1e4) is exactly 0 in float32
    kept, gate = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    assert (gate == 0).all()
    assert torch.equal(kept, context)


def test_a_gate_floor_shuts_gates_near_zero_exactly_and_stretches_the_rest():
    model = make_model(**LIVE, gate_floor=0.1)
    features, masks = make_inputs()
    context = model.init_context(features["text"], masks["text"], "text")
    with torch.no_grad():
        model.fusion.block.gfu.gate.weight.zero_()
        model.fusion.block.gfu.gate.bias.fill_(-2.5)  # sigmoid 0.076: a small gate, under the floor
    kept, gate = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    assert (gate == 0).all() and torch.equal(kept, context)
    with torch.no_grad():
        model.fusion.block.gfu.gate.bias.fill_(0.5)  # sigmoid 0.622 -> (0.622 - 0.1) / 0.8
    _, gate = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    assert_close(gate, torch.full_like(gate, (torch.sigmoid(torch.tensor(0.5)).item() - 0.1) / 0.8))


def test_a_modality_with_a_floor_of_its_own_is_shut_where_the_others_are_not():
    """gate_floors: the same gate sigmoid shuts an audio step under its higher floor and opens a text step."""
    model = make_model(**LIVE, gate_floor=0.1, gate_floors={"audio": 0.4})
    features, masks = make_inputs()
    context = model.init_context(features["vision"], masks["vision"], "vision")
    with torch.no_grad():
        model.fusion.block.gfu.gate.weight.zero_()
        model.fusion.block.gfu.gate.bias.fill_(0.0)  # sigmoid 0.5 everywhere
    kept, audio_gate = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    _, text_gate = model.fuse_step(context, features["text"], masks["text"], "text")
    assert_close(audio_gate, torch.full_like(audio_gate, (0.5 - 0.4) / 0.2))
    assert_close(text_gate, torch.full_like(text_gate, (0.5 - 0.1) / 0.8))
    with torch.no_grad():
        model.fusion.block.gfu.gate.bias.fill_(-0.6)  # sigmoid 0.354: under audio's floor, over text's
    kept, audio_gate = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    _, text_gate = model.fuse_step(context, features["text"], masks["text"], "text")
    assert (audio_gate == 0).all() and torch.equal(kept, context)
    assert_close(text_gate, torch.full_like(text_gate, (torch.sigmoid(torch.tensor(-0.6)).item() - 0.1) / 0.8))


def test_a_pass_reports_each_gates_sigmoid_before_the_floor():
    """What a gate-sparsity loss reads: how far under the floor a shut gate is, not only that it is shut."""
    features, masks = make_inputs()
    floored = make_model(**LIVE, gate_floor=0.2)
    with torch.no_grad():
        floored.fusion.block.gfu.gate.bias.fill_(-3.0)  # most gates under the floor, a few over it
    out = floored.eval()(features, masks)
    assert_close(out.gates, ((out.gate_sigmoids - 0.2) / 0.6).clamp(0, 1))
    assert (out.gates == 0).any() and (out.gate_sigmoids > 0).all()
    plain = make_model(**LIVE).eval()(features, masks)
    assert torch.equal(plain.gate_sigmoids, plain.gates)


def test_the_papers_gfu_with_the_gate_shut_still_rewrites_the_context():
    """(8) carries s', the context after attending to the window: the reason for `gfu: keep`."""
    model = make_model()
    features, masks = make_inputs()
    context = model.init_context(features["text"], masks["text"], "text")
    with torch.no_grad():
        model.fusion.block.gfu.gate.weight.zero_()
        model.fusion.block.gfu.gate.bias.fill_(-1e4)
    rewritten, _ = model.fuse_step(context, features["audio"], masks["audio"], "audio")
    assert (rewritten - context).abs().max() > 0.1


def test_a_readout_blends_the_latest_window_of_its_modality_into_every_prediction():
    """(10): rho_0 until the first text window, then the linear read-out of its masked mean; a
    sample whose window has no real step keeps the rho it had."""
    model = make_model(readout="text", readout_weight=0.3)
    with torch.no_grad():
        model.readout.start.fill_(0.25)
    features, masks = make_inputs()
    masks["text"][2] = False  # the third sample's text window has no real step
    out = model(features, masks, order=["audio", "text", "vision"])
    head = model.head(out.contexts)  # (B, 3)
    pooled = (features["text"] * masks["text"][..., None]).sum(1) / masks["text"].sum(1, keepdim=True).clamp(min=1)
    read = model.readout.linear(pooled).squeeze(-1)  # (B,)
    rho = torch.stack([torch.full((3,), 0.25), read, read], dim=1)
    rho[2, 1:] = 0.25
    assert_close(out.step_predictions, 0.7 * head + 0.3 * rho)
    assert_close(out.prediction, out.step_predictions[:, -1])


def test_streaming_with_a_readout_equals_forward():
    model = make_model(readout="text", readout_weight=0.4)
    features, masks = make_inputs()
    order = ["vision", "text", "audio"]
    context = model.init_context(features["vision"], masks["vision"], "vision")
    rho = model.read_out(None, features["vision"], masks["vision"], "vision")
    predictions = [model.predict(context, rho=rho)]
    for name in order[1:]:
        context, _ = model.fuse_step(context, features[name], masks[name], name)
        rho = model.read_out(rho, features[name], masks[name], name)
        predictions.append(model.predict(context, rho=rho))
    assert_close(torch.stack(predictions, dim=1), model(features, masks, order=order).step_predictions)
    assert make_model().read_out(None, features["text"], masks["text"], "text") is None  # no read-out, no rho


def test_learned_start_fuses_the_first_modality_into_h0_and_keeps_h0_without_data():
    model = make_model(**LIVE)
    features, masks = make_inputs()
    masks["text"][2] = False  # sample 2's first window has no real row
    context = model.init_context(features["text"], masks["text"], "text")
    expected, _ = model.fuse_step(model.start.h0.expand(3, -1), features["text"], masks["text"], "text")
    assert torch.equal(context, expected)
    assert torch.equal(context[2], model.start.h0.detach())  # not a zero context: head(0) would be arbitrary
    assert torch.isfinite(model.predict(context)).all()


def test_learned_start_needs_the_shared_block():
    with pytest.raises(ValueError, match="init=learned fuses the first modality with the block too"):
        GRFConfig(init="learned", share_block=False)
    with pytest.raises(ValueError, match="gfu='paper' is not one of"):
        GRFConfig(gfu="paper")


@pytest.mark.parametrize("variant", [RELEASED, LIVE], ids=["released", "live"])
def test_every_parameter_learns(variant):
    model = make_model(**variant).train()
    out = model(*make_inputs())
    aux = out.aux_prediction.sum() if out.aux_prediction is not None else 0
    (out.prediction.sum() + aux).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_dropout_acts_in_training_only():
    model = make_model()
    features, masks = make_inputs()
    assert_close(model(features, masks).prediction, model(features, masks).prediction)
    model.train()
    assert not torch.equal(model(features, masks).prediction, model(features, masks).prediction)


@pytest.mark.parametrize("variant", [RELEASED, LIVE], ids=["released", "live"])
def test_training_in_length_groups_gives_the_whole_batch_result(variant, monkeypatch):
    """Training fuses sub-batches of similar length, each cut to its longest real step: the same
    outputs and gradients as the whole padded batch (dropout 0 so the two passes can be compared)."""
    model = make_model(**{**variant, "dropout": 0.0}).train()
    features, masks = pad(*make_inputs(batch=7), extra=9)
    masks["vision"][3] = False  # a sample with no real step of one modality

    def outputs_and_grads(rows):
        monkeypatch.setattr(FusionBlock, "group_rows", rows)
        model.zero_grad()
        out = model(features, masks)
        (out.step_predictions.sum() + out.gates.sum()).backward()
        return out.step_predictions, out.gates, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, grouped = outputs_and_grads(0), outputs_and_grads(2)
    assert_close(grouped[0], whole[0], atol=1e-5, rtol=1e-5)
    assert_close(grouped[1], whole[1], atol=1e-5, rtol=1e-5)
    assert len(grouped[2]) == len(whole[2])
    for g, w in zip(grouped[2], whole[2]):
        assert_close(g, w, atol=1e-5, rtol=1e-4)

@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile's CPU backend builds C++ kernels: no C++ compiler (c++, g++, clang++) on PATH")
def test_streaming_primitives_compile_whole_and_equal_eager():
    """fuse_step and predict hold no host synchronisation (no .item(), no branch on tensor values):
    each compiles as one graph (fullgraph=True fails on any break) and gives eager's numbers."""
    model = make_model(d_model=16, num_layers=1, num_heads=2, d_ffn=32)
    context, x = torch.randn(3, 16), torch.randn(3, 7, 5)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 0])[:, None]  # a full, a padded, an empty window
    fuse_step = torch.compile(model.fuse_step, fullgraph=True)
    predict = torch.compile(model.predict, fullgraph=True)
    with torch.no_grad():
        new_context, gate = fuse_step(context, x, mask, "audio")
        expected_context, expected_gate = model.fuse_step(context, x, mask, "audio")
        assert_close(new_context, expected_context, atol=1e-5, rtol=1e-5)
        assert_close(gate, expected_gate, atol=1e-5, rtol=1e-5)
        assert_close(predict(new_context), model.predict(expected_context), atol=1e-5, rtol=1e-5)
    blended = make_model(d_model=16, num_layers=1, num_heads=2, d_ffn=32, readout="audio")
    read_out = torch.compile(blended.read_out, fullgraph=True)
    predict = torch.compile(blended.predict, fullgraph=True)
    with torch.no_grad():
        rho = read_out(torch.zeros(3), x, mask, "audio")
        expected_rho = blended.read_out(torch.zeros(3), x, mask, "audio")
        assert_close(rho, expected_rho, atol=1e-5, rtol=1e-5)
        assert_close(predict(context, rho=rho), blended.predict(context, rho=expected_rho), atol=1e-5, rtol=1e-5)

# -- errors ------------------------------------------------------------------------------------


def test_clear_errors_for_bad_inputs():
    model = make_model()
    features, masks = make_inputs()
    with pytest.raises(ValueError, match=r"audio features have shape \(3, 37, 6\): expected \(B, T, 5\)"):
        model({**features, "audio": torch.randn(3, 37, 6)})
    with pytest.raises(ValueError, match="unknown modality 'speech'"):
        model({**features, "speech": torch.randn(3, 4, 5)})
    with pytest.raises(ValueError, match="expected bool"):
        model(features, {**masks, "text": masks["text"].float()})
    with pytest.raises(ValueError, match="names a modality twice"):
        model(features, masks, order=["text", "text", "audio"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_heads=5 must divide d_model=64"):
        GRFConfig(num_heads=5)
    with pytest.raises(ValueError, match="init='mean'"):
        GRFConfig(init="mean")
    with pytest.raises(ValueError, match="must list each of"):
        GRFConfig(order=["text", "audio"])
    with pytest.raises(ValueError, match=r"gate_floor=0.5 must be in \[0, 0.5\)"):
        GRFConfig(gate_floor=0.5)
    with pytest.raises(ValueError, match=r"gate_floors.audio=0.6 must be in \[0, 0.5\)"):
        GRFConfig(gate_floors={"audio": 0.6})
    with pytest.raises(ValueError, match=r"gate_floors names \['speech'\], which is not one of the modalities"):
        GRFConfig(gate_floors={"speech": 0.3})
    with pytest.raises(ValueError, match="readout='speech' is not one of the modalities"):
        GRFConfig(readout="speech")
    with pytest.raises(ValueError, match=r"readout_weight=0 must be in \(0, 1\]"):
        GRFConfig(readout="text", readout_weight=0)


# -- pinned numerics and checkpoint keys ---------------------------------------------------------

# Recorded with torch 2.13.0 on CPU, float32. A change here changes what every checkpoint computes:
# update these only on purpose, and say why in the commit.
GOLDEN_STEP_PREDICTIONS = {
    "grf": [[0.175887, 0.120117, 0.354463], [0.183924, 0.299063, 0.38524], [0.255667, 0.257304, 0.527024]],
    "released": [
        [-0.196751, -0.661389, -0.581254],
        [-0.151882, -0.492802, -0.730337],
        [-0.161674, -0.48263, -0.63409],
    ],
}


@pytest.mark.parametrize("name,variant", [("grf", {}), ("released", RELEASED)])
def test_golden_values_under_a_fixed_seed(name, variant):
    out = make_model(seed=0, **variant)(*make_inputs())
    expected = torch.tensor(GOLDEN_STEP_PREDICTIONS[name])
    assert_close(out.step_predictions, expected, atol=1e-5, rtol=1e-4)


STATE_DICT_KEYS = Path(__file__).with_name("golden_grf_state_dict_keys.txt")


def test_state_dict_keys_are_pinned():
    """The trainer-to-serve contract: renaming a module breaks every saved checkpoint."""
    keys = [k for variant in ({}, RELEASED) for k in make_model(**variant).state_dict()]
    assert keys == STATE_DICT_KEYS.read_text().split()


# -- on a GPU, where there is one ----------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_streaming_equals_forward_and_matches_the_cpu():
    model = make_model()
    features, masks = make_inputs()
    on_cpu = model(features, masks).step_predictions
    gpu = torch.device("cuda")
    model = model.to(gpu)
    features = {k: v.to(gpu) for k, v in features.items()}
    masks = {k: v.to(gpu) for k, v in masks.items()}
    out = model(features, masks)
    predictions, gates, _ = stream(model, features, masks, ["text", "audio", "vision"])
    assert_close(predictions, out.step_predictions)
    assert_close(gates, out.gates)
    # TF32 and other kernels: close to the CPU, not bit-equal
    assert_close(out.step_predictions.cpu(), on_cpu, atol=1e-3, rtol=1e-3)
