"""Audio: frame-level speech descriptors at 100 rows per second, the kind affect research uses.

CMU-MOSI's audio features were COVAREP descriptors (pitch, voicing, MFCCs, energy); MMSA-FET's
librosa setting gives MFCCs, RMS and spectral shape. This extractor gives, per 10 ms:

    0-19  MFCC c0..c19: 40 mel bands 0-8 kHz (librosa's slaney filterbank), power in dB, DCT-II
          ortho; equal to librosa.feature.mfcc(n_fft=512, win_length=400, hop_length=160,
          n_mels=40, center=True, pad_mode="constant") with power_to_db(top_db=None)
    20    log2(F0 / 100 Hz) where voiced, else 0 (YIN, 60-500 Hz)
    21    voicing: 1 - YIN aperiodicity, in [0, 1]
    22    RMS energy in dBFS (floor -100)
    23    zero-crossing rate
    24    spectral centroid / 8 kHz
    25    spectral flatness

Row t describes the audio around t / 100 s: a 50 ms frame centred there (long enough for two
periods of a 60 Hz voice) feeds YIN, and the 25 ms Hann window at its centre feeds the rest. The
stream starts with 25 ms of zeros so row 0 sits at time 0, and a row is emitted once the 25 ms
after its centre have arrived. `flush` pads the end with zeros, so a stream of N samples at
16 kHz gives ceil(N / 160) rows whichever way it was chunked: chunked extraction equals whole-file
extraction row for row, to float rounding.

Input at any sample rate is resampled to 16 kHz by soxr (the resampler librosa uses by default)
in streaming mode, whose output does not depend on how the input is chunked. The values are
computed with numpy: librosa's own feature functions compile with numba on first use (~13-20 s
at every fresh start); only its filterbank, which needs no compilation, is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import soxr

from grf_stream.features.base import Extractor, empty_output

RATE = 16_000  # Hz, what every descriptor is computed at
HOP = 160  # 10 ms: 100 rows per second
FRAME = 800  # 50 ms analysis frame centred on a row's time
WINDOW = 400  # 25 ms Hann window of the spectral descriptors, centred in the frame
N_FFT = 512
N_MELS, N_MFCC = 40, 20
F0_MIN, F0_MAX = 60.0, 500.0  # Hz: the range of speaking voices
YIN_PICK = 0.1  # take the first dip of the normalised difference below this (YIN's threshold)
VOICED_BELOW = 0.45  # aperiodicity under which a frame counts as voiced; set against librosa.pyin (see tests)
POWER_FLOOR = 1e-10  # -100 dB: what digital silence maps to

DESCRIPTORS = [f"mfcc{i}" for i in range(N_MFCC)] + ["log2_f0_100", "voicing", "rms_db", "zcr", "centroid_8k", "flatness"]


@dataclass(frozen=True)
class AudioChunk:
    """Mono audio: PCM16 little-endian bytes, an int16 array, or a float array in [-1, 1]."""

    samples: bytes | np.ndarray
    sample_rate: int


@dataclass
class _Stream:
    sample_rate: int | None = None
    resampler: soxr.ResampleStream | None = None
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(FRAME // 2, np.float64))  # from the next row's frame start
    samples: int = 0  # 16 kHz samples received
    rows: int = 0  # rows emitted


class AudioExtractor(Extractor):
    """AudioChunk -> (T, 26) float32 descriptors at 100 rows/s, all rows real."""

    name, version, size, rate = "speech-descriptors", "1", len(DESCRIPTORS), RATE / HOP

    def __init__(self) -> None:
        super().__init__()
        self.describe = SpeechDescriptors()

    def _new_state(self) -> _Stream:
        return _Stream()

    def warm_input(self) -> AudioChunk:
        noise = np.random.default_rng(0).normal(0, 0.1, 44100)  # 1 s at a rate that needs resampling
        return AudioChunk(noise.astype(np.float32), 44100)

    def _extract(self, stream: _Stream, chunk: AudioChunk) -> tuple[np.ndarray, np.ndarray]:
        samples = as_float_mono(chunk)
        _set_rate(stream, chunk.sample_rate)
        if stream.resampler is not None:
            samples = stream.resampler.resample_chunk(samples, last=False)
        stream.buffer = np.concatenate([stream.buffer, samples])
        stream.samples += len(samples)
        return self._emit(stream, rows_wanted=None)

    def _flush(self, stream: _Stream) -> tuple[np.ndarray, np.ndarray]:
        if stream.resampler is not None:
            tail = stream.resampler.resample_chunk(np.zeros(0), last=True)
            stream.buffer = np.concatenate([stream.buffer, tail])
            stream.samples += len(tail)
        rows_wanted = math.ceil(stream.samples / HOP) - stream.rows  # one row per started 10 ms
        padding = max(0, (rows_wanted - 1) * HOP + FRAME - len(stream.buffer))
        stream.buffer = np.concatenate([stream.buffer, np.zeros(padding)])
        return self._emit(stream, rows_wanted)

    def _emit(self, stream: _Stream, rows_wanted: int | None) -> tuple[np.ndarray, np.ndarray]:
        ready = (len(stream.buffer) - FRAME) // HOP + 1 if len(stream.buffer) >= FRAME else 0
        rows = ready if rows_wanted is None else min(ready, max(rows_wanted, 0))
        if rows == 0:
            return empty_output(self.size)
        frames = np.lib.stride_tricks.sliding_window_view(stream.buffer, FRAME)[::HOP][:rows]  # (rows, FRAME)
        stream.buffer = stream.buffer[rows * HOP :].copy()
        stream.rows += rows
        return self.describe(frames), np.ones(rows, bool)


def as_float_mono(chunk: AudioChunk) -> np.ndarray:
    """The chunk's samples as float64 in [-1, 1]; PCM16 bytes and int16 arrays are scaled by 1/32768."""
    samples = chunk.samples
    if isinstance(samples, (bytes, bytearray, memoryview)):
        if len(samples) % 2:
            raise ValueError(f"audio chunk has {len(samples)} bytes, an odd count: PCM16 needs 2 bytes per sample")
        samples = np.frombuffer(samples, dtype="<i2")
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio chunk has shape {samples.shape}: send mono samples, shape (n,) (average the channels)")
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768.0
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio samples of dtype {samples.dtype} not supported: send int16 PCM or float in [-1, 1]")
    if not np.isfinite(samples).all():
        raise ValueError("audio chunk holds NaN or infinite samples: send finite floats in [-1, 1]")
    return samples.astype(np.float64)


def _set_rate(stream: _Stream, sample_rate: int) -> None:
    if stream.sample_rate == sample_rate:
        return
    if stream.sample_rate is not None:
        raise ValueError(f"audio sample rate changed from {stream.sample_rate} to {sample_rate} Hz within a session: flush the session first")
    if not isinstance(sample_rate, (int, np.integer)) or not 4_000 <= sample_rate <= 384_000:
        raise ValueError(f"audio sample rate {sample_rate!r} not supported: send an integer rate in Hz between 4000 and 384000 (16000 is native)")
    stream.sample_rate = int(sample_rate)
    if sample_rate != RATE:
        stream.resampler = soxr.ResampleStream(int(sample_rate), RATE, 1, dtype="float64", quality="HQ")


class SpeechDescriptors:
    """Frames (n, FRAME) of 16 kHz audio -> (n, 26) float32 descriptors; see the module docstring."""

    def __init__(self) -> None:
        from librosa.filters import mel  # the field's reference filterbank; pure numpy, no numba compile

        self.mel_filters = mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float64)  # (40, 257)
        self.dct = _dct_ortho(N_MFCC, N_MELS)  # (20, 40)
        self.window = np.zeros(N_FFT)
        offset = (N_FFT - WINDOW) // 2  # librosa centres the window inside n_fft
        self.window[offset : offset + WINDOW] = np.hanning(WINDOW + 1)[:-1]  # periodic Hann, as librosa's
        self.frequencies = np.fft.rfftfreq(N_FFT, 1 / RATE)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        centre = FRAME // 2
        spectral = frames[:, centre - N_FFT // 2 : centre + N_FFT // 2] * self.window  # (n, 512)
        power = np.abs(np.fft.rfft(spectral, axis=1)) ** 2  # (n, 257)
        core = frames[:, centre - WINDOW // 2 : centre + WINDOW // 2]  # (n, 400) the 25 ms around the row
        log2_f0, voicing = yin(frames)
        columns = [
            self.mfcc(power),
            log2_f0[:, None],
            voicing[:, None],
            10 * np.log10(np.maximum((core**2).mean(axis=1), POWER_FLOOR))[:, None],
            np.abs(np.diff(np.signbit(core), axis=1)).mean(axis=1)[:, None],
            self.centroid(power)[:, None] / (RATE / 2),
            _flatness(power)[:, None],
        ]
        return np.concatenate(columns, axis=1).astype(np.float32)

    def mfcc(self, power: np.ndarray) -> np.ndarray:
        mel_db = 10 * np.log10(np.maximum(power @ self.mel_filters.T, POWER_FLOOR))  # (n, 40)
        return mel_db @ self.dct.T  # (n, 20)

    def centroid(self, power: np.ndarray) -> np.ndarray:
        total = power.sum(axis=1)
        return np.where(total > POWER_FLOOR, (power @ self.frequencies) / np.maximum(total, POWER_FLOOR), 0.0)


def _flatness(power: np.ndarray) -> np.ndarray:
    floored = np.maximum(power, POWER_FLOOR)
    return np.exp(np.log(floored).mean(axis=1)) / floored.mean(axis=1)


def _dct_ortho(n_out: int, n_in: int) -> np.ndarray:
    """DCT-II with orthonormal scaling, as scipy.fft.dct(norm='ortho'), first n_out rows."""
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2 / n_in)
    basis[0] /= np.sqrt(2)
    return basis


def yin(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch (de Cheveigne & Kawahara 2002) of each frame: (log2(F0 / 100 Hz) or 0, voicing)."""
    tau_min, tau_max = int(RATE / F0_MAX), math.ceil(RATE / F0_MIN)
    normalised = _normalised_difference(frames, tau_max)  # (n, tau_max + 1)
    tau = _pick_lag(normalised, tau_min, tau_max)
    rows = np.arange(len(frames))
    before, at, after = normalised[rows, tau - 1], normalised[rows, tau], normalised[rows, tau + 1]
    curvature = before - 2 * at + after
    shift = np.where(curvature > 0, (before - after) / (2 * np.where(curvature > 0, curvature, 1)), 0.0)  # parabola vertex
    f0 = RATE / (tau + np.clip(shift, -1, 1))
    voiced = at < VOICED_BELOW
    return np.where(voiced, np.log2(f0 / 100.0), 0.0), np.clip(1 - at, 0, 1)


def _normalised_difference(frames: np.ndarray, tau_max: int) -> np.ndarray:
    """YIN's cumulative-mean-normalised difference d'(tau), tau = 0..tau_max, over FRAME - tau_max samples."""
    width = frames.shape[1] - tau_max
    size = 1 << (frames.shape[1] - 1).bit_length()  # no circular wrap: width + tau_max <= frame length
    correlation = np.fft.irfft(np.conj(np.fft.rfft(frames[:, :width], size)) * np.fft.rfft(frames, size), size)[:, : tau_max + 1]
    energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(tau_max + 1)
    shifted_energy = energy[:, lags + width] - energy[:, lags]  # sum of x[j + tau]^2 over the window
    difference = np.maximum(shifted_energy[:, :1] + shifted_energy - 2 * correlation, 0.0)
    difference[:, 0] = 0.0
    running = np.cumsum(difference[:, 1:], axis=1) / lags[1:]  # mean of d over 1..tau
    normalised = np.ones_like(difference)
    audible = running > 1e-12 * width  # silence has no period: leave d' = 1 (aperiodic)
    normalised[:, 1:] = np.where(audible, difference[:, 1:] / np.where(audible, running, 1), 1.0)
    return normalised


def _pick_lag(normalised: np.ndarray, tau_min: int, tau_max: int) -> np.ndarray:
    """The first local minimum under YIN_PICK in [tau_min, tau_max), else the global minimum there."""
    inner = normalised[:, tau_min:tau_max]  # candidates; tau_max itself has no right neighbour
    left, right = normalised[:, tau_min - 1 : tau_max - 1], normalised[:, tau_min + 1 : tau_max + 1]
    dips = (inner < YIN_PICK) & (inner <= left) & (inner < right)
    first_dip = np.argmax(dips, axis=1)
    lowest = np.argmin(inner, axis=1)
    return tau_min + np.where(dips.any(axis=1), first_dip, lowest)
