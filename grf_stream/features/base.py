"""What every extractor shares: an output spec, per-session streaming state, one torch thread.

An extractor turns one modality's raw chunks into feature rows. The server keeps one extractor
per modality per process and feeds it chunks of many sessions; the offline tool feeds it a whole
file as one session. Both call the same `extract`, so training and serving see the same features.

    features, mask = extractor.extract(chunk, session="s1")   # rows ready so far
    features, mask = extractor.flush(session="s1")            # end of stream: the held-back tail

`features` is float32 (T, size); `mask` is bool (T,), True where a row is real (False, e.g., for
a video frame with no face: its row is zeros and the model must ignore it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grf_stream.spec import ModalitySpec

DEFAULT_SESSION = "default"


@dataclass(frozen=True)
class SignalChunk:
    """A chunk of a sampled sensor signal, what a `signal` message brings its modality's extractor."""

    values: np.ndarray  # (T, channels) float32, one row a sample
    rate: float  # samples a second
_whole_media = itertools.count()  # private session ids for extract_all


def use_one_torch_thread() -> None:
    """Run torch on one thread: with a second busy core, two threads made torch ~40x slower here.

    Extractors run many to a machine (one per modality, one per Ray worker), so parallelism comes
    from running several of them, never from threads inside one.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def empty_output(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, size), np.float32), np.zeros(0, bool)


class Extractor:
    """Base of the text, audio and video extractors.

    Subclasses set `name`, `version`, `size`, `rate` and implement `_new_state`, `_extract` and
    optionally `_flush`. State lives in `self._sessions`, one entry per session id, so one loaded
    model serves every session of a process.
    """

    name: str  # the extractor, as checkpoints and feature stores record it
    version: str  # bumped whenever the output changes for the same input
    size: int  # feature size d
    rate: float  # feature rows per second of media; 0 when rows are not tied to time (text)

    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}

    @classmethod
    def output_spec(cls) -> ModalitySpec:
        """What this extractor produces, known without loading its model."""
        return ModalitySpec(extractor=cls.name, version=cls.version, size=cls.size, rate=cls.rate)

    @property
    def spec(self) -> ModalitySpec:
        return self.output_spec()

    def extract(self, chunk: Any, session: str = DEFAULT_SESSION) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows that `chunk` completes for `session`: float32 (T, size) and bool mask (T,)."""
        if session not in self._sessions:
            self._sessions[session] = self._new_state()
        features, mask = self._extract(self._sessions[session], chunk)
        assert features.shape == (len(mask), self.size) and features.dtype == np.float32, (self.name, features.shape)
        return features, mask

    def flush(self, session: str = DEFAULT_SESSION) -> tuple[np.ndarray, np.ndarray]:
        """End of a session's stream: the rows still held back, then the session is forgotten."""
        state = self._sessions.pop(session, None)
        if state is None:
            return empty_output(self.size)
        return self._flush(state)

    def close(self, session: str = DEFAULT_SESSION) -> None:
        """Forget a session without emitting its held-back rows (a client that went away)."""
        self._sessions.pop(session, None)

    @property
    def open_sessions(self) -> list[str]:
        return list(self._sessions)

    def warm(self) -> None:
        """Extract a typical chunk once, so that the first chunk of the first session is served as
        fast as any other: a network's first run allocates and initialises."""
        self.extract_all(self.warm_input())

    def warm_input(self) -> Any:
        raise NotImplementedError

    def extract_all(self, chunk: Any) -> tuple[np.ndarray, np.ndarray]:
        """Whole media at once, as the offline tool does: one private session, extracted then flushed."""
        session = f"__whole_{next(_whole_media)}"
        try:
            head = self.extract(chunk, session)
            tail = self.flush(session)
        finally:
            self.close(session)  # after an error; a no-op once flushed
        return np.concatenate([head[0], tail[0]]), np.concatenate([head[1], tail[1]])

    def _new_state(self) -> Any:
        return None

    def _extract(self, state: Any, chunk: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _flush(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        return empty_output(self.size)
