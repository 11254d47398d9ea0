"""A modality of one's own, as a user adds it: a wrist sensor's pulse and skin conductance at 4 Hz.

Loaded by the server with `plugins=[tests.serve.pulse_modality]`; clients send it in `signal`
messages (modality "pulse", two columns: beats a minute, microsiemens).
"""

import numpy as np

from grf_stream.features import Extractor, SignalChunk
from grf_stream.serving.modalities import register, signal_modality

RATE = 4.0


class PulseExtractor(Extractor):
    """A row a sample: the pulse and the skin conductance about their resting levels, and how each
    moved since the sample before (the one before a chunk is remembered per session)."""

    name, version, size, rate = "pulse-eda", "1", 4, RATE

    def _extract(self, state, chunk: SignalChunk):
        if chunk.rate != RATE or chunk.values.shape[1] != 2:
            raise ValueError(f"got {chunk.values.shape[1]} columns at {chunk.rate:g} Hz")
        levels = (chunk.values - np.array([70.0, 5.0], np.float32)) / np.array([15.0, 2.0], np.float32)
        previous = np.concatenate([state.get("last", levels[:1]), levels[:-1]])
        state["last"] = levels[-1:]
        return np.hstack([levels, levels - previous]).astype(np.float32), np.ones(len(levels), bool)

    def _new_state(self):
        return {}

    def warm_input(self):
        return SignalChunk(np.full((4, 2), [70.0, 5.0], np.float32), RATE)


register(signal_modality("pulse", "two columns, beats a minute and microsiemens, at 4 Hz"), PulseExtractor)
