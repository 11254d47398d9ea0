"""Dataset readers: MulT and MMSA pickles and the feature store, on synthetic files of real shapes."""

import pickle

import numpy as np
import pytest

from grf_stream.data import DataConfig, FeatureSpec, FeatureStore, ModalitySpec, check_sizes, collate, load_split
from grf_stream.data.synthetic import MMSA_SHAPES, MULT_SHAPES, SyntheticConfig, generate, label_of, write

FEW = {"train": 6, "valid": 3, "test": 3}


def synthetic_config(shapes):
    return SyntheticConfig(
        sizes={m: d for m, (_, d) in shapes.items()}, lengths={m: t for m, (t, _) in shapes.items()}, samples=FEW
    )


@pytest.fixture(scope="module")
def reference():
    """The samples every writer below starts from (real lengths, before padding)."""
    return generate(synthetic_config(MULT_SHAPES))


def real_lengths(samples, m):
    return [len(s.features[m]) for s in samples]


def test_mult_pickle_masks_come_from_all_zero_rows(tmp_path, reference):
    path = write("mult", tmp_path / "mosi_data_noalign.pkl", synthetic_config(MULT_SHAPES))
    samples = load_split(DataConfig(format="mult", path=str(path)), "train")
    assert [s.features["audio"].shape for s in samples] == [(375, 5)] * 6  # the file's real shapes
    for m in ("text", "audio", "vision"):
        assert [int(s.masks[m].sum()) for s in samples] == real_lengths(reference["train"], m)
    assert all(np.isfinite(s.features["audio"]).all() for s in samples)  # -inf in the file became 0
    assert [s.label for s in samples] == pytest.approx([s.label for s in reference["train"]])
    assert samples[0].id == f"{reference['train'][0].id}_0_0"


def test_mmsa_pickle_masks_come_from_lengths_and_bert_attention(tmp_path, reference):
    path = write("mmsa", tmp_path / "unaligned_50.pkl", synthetic_config(MMSA_SHAPES))
    samples = load_split(DataConfig(format="mmsa", path=str(path)), "valid")
    expected = generate(synthetic_config(MMSA_SHAPES))["valid"]
    assert samples[0].features["text"].shape == (50, 768)
    for m in ("text", "audio", "vision"):
        assert [int(s.masks[m].sum()) for s in samples] == real_lengths(expected, m)


def test_feature_store_round_trip(tmp_path, reference):
    root = write("store", tmp_path / "store", synthetic_config(MULT_SHAPES))
    samples = load_split(DataConfig(format="store", path=str(root)), "test")
    for got, want in zip(samples, reference["test"]):
        assert got.id == want.id and got.label == pytest.approx(want.label)
        for m in want.features:
            np.testing.assert_array_equal(got.features[m], want.features[m])
            assert got.masks[m].all()


def test_store_keeps_an_empty_modality_as_one_masked_step(tmp_path):
    spec = FeatureSpec({"text": ModalitySpec("t", "1", 4, 0.0), "vision": ModalitySpec("v", "1", 3, 30.0)})
    store = FeatureStore.create(tmp_path, spec)
    store.write_features("a", {"text": np.ones((2, 4)), "vision": np.zeros((0, 3))})
    store.write_index([{"id": "a", "split": "train", "label": 1.5}])
    (sample,) = store.load_split("train")
    assert sample.features["vision"].shape == (1, 3) and not sample.masks["vision"].any()
    assert store.has("a") and not store.has("b")


def test_store_refuses_to_mix_specs(tmp_path):
    FeatureStore.create(tmp_path, FeatureSpec({"text": ModalitySpec("t", "1", 4, 0.0)}))
    with pytest.raises(ValueError, match="another spec"):
        FeatureStore.create(tmp_path, FeatureSpec({"text": ModalitySpec("t", "2", 4, 0.0)}))


def test_collate_pads_and_masks():
    samples = generate(SyntheticConfig(sizes={"a": 3}, lengths={"a": 9}, samples={"train": 4}))["train"]
    batch = collate(samples)
    assert batch.features["a"].shape == (4, max(len(s.features["a"]) for s in samples), 3)
    assert batch.masks["a"].sum(1).tolist() == [len(s.features["a"]) for s in samples]
    assert (batch.features["a"][~batch.masks["a"]] == 0).all()


def test_labels_need_more_than_one_modality():
    assert label_of({"text": 0.0, "audio": 1.0, "vision": 1.0}) != label_of({"text": 0.0, "audio": 1.0, "vision": -1.0})
    assert label_of({"text": 1.0, "audio": 0.0, "vision": 0.0}) != label_of({"text": -1.0, "audio": 0.0, "vision": 0.0})


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: set data.path"):
        load_split(DataConfig(format="mult", path=str(tmp_path / "nope.pkl")), "train")
    mmsa = write("mmsa", tmp_path / "mmsa.pkl", synthetic_config(MMSA_SHAPES))
    with pytest.raises(KeyError, match="lacks key 'labels'.*is data.format right"):
        load_split(DataConfig(format="mult", path=str(mmsa)), "train")
    (tmp_path / "one_split.pkl").write_bytes(pickle.dumps({"train": {}}))
    with pytest.raises(KeyError, match="has no split 'valid'"):
        load_split(DataConfig(format="mult", path=str(tmp_path / "one_split.pkl")), "valid")
    samples = load_split(DataConfig(format="mmsa", path=str(mmsa)), "test")
    with pytest.raises(ValueError, match="text features have size 768 but model.modalities.text is 300"):
        check_sizes(samples, {"text": 300}, "mmsa.pkl")
    with pytest.raises(FileNotFoundError, match="not a feature store"):
        load_split(DataConfig(format="store", path=str(tmp_path)), "train")
    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(format="mult")
