import math

import numpy as np
import pytest
import torch

from conftest import JFK, MOSI_CLIP, MOSI_WAV, need_media
from grf_stream.features.audio import DESCRIPTORS, HOP, N_FFT, N_MELS, N_MFCC, RATE, WINDOW, AudioChunk

RMS_DB, LOG2_F0, VOICING = DESCRIPTORS.index("rms_db"), DESCRIPTORS.index("log2_f0_100"), DESCRIPTORS.index("voicing")


def decoded(path):
    from grf_stream.features.media import read_audio
    need_media(path)
    return read_audio(path)


def chunked(extractor, samples, rate, sizes, session="chunked"):
    rows, start = [], 0
    for size in sizes:
        if start >= len(samples):
            break
        rows.append(extractor.extract(AudioChunk(samples[start : start + size], rate), session)[0])
        start += size
    rows.append(extractor.flush(session)[0])
    return np.concatenate(rows)


@pytest.mark.parametrize("path", [MOSI_CLIP, MOSI_WAV, JFK], ids=lambda p: p.name)
def test_real_speech_is_finite_and_voiced(audio_extractor, path):
    audio = decoded(path)
    features, mask = audio_extractor.extract_all(audio)
    assert features.shape == (math.ceil(len(audio.samples) / audio.sample_rate * 100 - 1e-9), 26)
    assert mask.all() and np.isfinite(features).all()
    voiced = features[:, LOG2_F0] != 0
    assert 0.3 < voiced.mean() < 0.9  # people pause, breathe and say consonants
    f0 = 100 * 2 ** features[voiced, LOG2_F0]
    assert 100 < np.median(f0) < 300  # these three speakers talk at 200-230 Hz


def test_speech_energy_is_where_the_speaker_talks(audio_extractor):
    """One second of silence, then the MOSI utterance, then one second of silence: rows follow it."""
    speech = decoded(MOSI_WAV)
    assert speech.sample_rate == RATE
    pause = np.zeros(RATE)
    features, _ = audio_extractor.extract_all(AudioChunk(np.concatenate([pause, speech.samples, pause]), RATE))
    quiet = np.r_[features[5:95], features[-95:-5]]
    talking = features[100 : -100]
    assert (quiet[:, RMS_DB] == -100).all() and (quiet[:, LOG2_F0] == 0).all()
    assert np.percentile(talking[:, RMS_DB], 90) > -45  # loud speech rows
    assert (talking[:, LOG2_F0] != 0).mean() > 0.4


def test_chunked_streaming_equals_whole_file(audio_extractor):
    """Any chunking at any input rate gives the whole file's rows, bit for bit (soxr streams exactly)."""
    audio = decoded(MOSI_CLIP)  # 44.1 kHz, resampled
    whole, _ = audio_extractor.extract_all(audio)
    sizes = np.random.default_rng(0).integers(1, 6000, size=10_000)
    np.testing.assert_array_equal(chunked(audio_extractor, audio.samples, audio.sample_rate, sizes), whole)
    np.testing.assert_array_equal(chunked(audio_extractor, audio.samples, audio.sample_rate, [441] * 10_000), whole)


def test_rows_are_emitted_25ms_after_their_time(audio_extractor):
    session = "latency"
    features, _ = audio_extractor.extract(AudioChunk(np.zeros(RATE // 10), RATE), session)  # 100 ms
    assert len(features) == 8  # rows at 0..70 ms; the row at 80 ms waits for 105 ms of audio
    features, _ = audio_extractor.flush(session)
    assert len(features) == 2


def test_pcm16_bytes_int16_and_float_agree(audio_extractor):
    audio = decoded(MOSI_WAV)
    pcm = np.round(audio.samples * 32768).clip(-32768, 32767).astype(np.int16)
    from_bytes, _ = audio_extractor.extract_all(AudioChunk(pcm.tobytes(), RATE))
    from_int16, _ = audio_extractor.extract_all(AudioChunk(pcm, RATE))
    from_float, _ = audio_extractor.extract_all(AudioChunk(pcm.astype(np.float32) / 32768, RATE))
    np.testing.assert_array_equal(from_bytes, from_int16)
    np.testing.assert_allclose(from_float, from_int16, atol=1e-3)


def test_mfcc_matches_an_independent_reference(audio_extractor):
    """torch.stft + librosa's filterbank + scipy's DCT, framed like librosa (center=True, zero padding)."""
    import scipy.fft
    import soxr
    from librosa.filters import mel as mel_filters  # librosa's feature functions would compile with numba for ~15 s

    audio = decoded(JFK)
    y = soxr.resample(audio.samples, audio.sample_rate, RATE, quality="HQ")
    window = torch.hann_window(WINDOW, dtype=torch.float64)
    spectrum = torch.stft(torch.from_numpy(y), N_FFT, HOP, WINDOW, window, center=True, pad_mode="constant", return_complex=True)
    mel = mel_filters(sr=RATE, n_fft=N_FFT, n_mels=N_MELS) @ spectrum.abs().numpy() ** 2
    reference = scipy.fft.dct(10 * np.log10(np.maximum(mel, 1e-10)), axis=0, norm="ortho")[:N_MFCC].T
    features, _ = audio_extractor.extract_all(AudioChunk(y, RATE))
    rows = min(len(reference), len(features))
    np.testing.assert_allclose(features[:rows, :N_MFCC], reference[:rows], atol=1e-3, rtol=1e-4)


def test_pitch_of_a_tone(audio_extractor):
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)
    features, _ = audio_extractor.extract_all(AudioChunk(tone, RATE))
    steady = features[5:-5]
    np.testing.assert_allclose(100 * 2 ** steady[:, LOG2_F0], 220, rtol=0.005)
    assert (steady[:, VOICING] > 0.95).all()


def test_silence_is_finite_and_unvoiced(audio_extractor):
    features, mask = audio_extractor.extract_all(AudioChunk(np.zeros(RATE, np.int16), RATE))
    assert features.shape == (100, 26) and mask.all() and np.isfinite(features).all()
    assert (features[:, RMS_DB] == -100).all() and (features[:, LOG2_F0] == 0).all() and (features[:, VOICING] == 0).all()


def test_too_short_and_empty_streams(audio_extractor):
    assert audio_extractor.extract_all(AudioChunk(np.zeros(1), RATE))[0].shape == (1, 26)
    assert audio_extractor.extract_all(AudioChunk(np.zeros(0), RATE))[0].shape == (0, 26)
    assert audio_extractor.flush("never-opened")[0].shape == (0, 26)


@pytest.mark.parametrize("chunk, message", [
    (AudioChunk(b"\x00\x01\x02", RATE), "odd count"),
    (AudioChunk(np.zeros((2, 100)), RATE), "mono"),
    (AudioChunk(np.zeros(100, np.int32), RATE), "int16 PCM or float"),
    (AudioChunk(np.array([0.0, np.nan]), RATE), "NaN"),
    (AudioChunk(np.zeros(100), 100), "sample rate 100"),
])
def test_bad_chunks_say_what_to_send(audio_extractor, chunk, message):
    with pytest.raises(ValueError, match=message):
        audio_extractor.extract(chunk, session="bad")
    audio_extractor.close("bad")


def test_a_rate_change_within_a_session_is_refused(audio_extractor):
    audio_extractor.extract(AudioChunk(np.zeros(100), 16_000), session="rates")
    with pytest.raises(ValueError, match="changed from 16000 to 44100"):
        audio_extractor.extract(AudioChunk(np.zeros(100), 44_100), session="rates")
    audio_extractor.close("rates")


def test_sessions_are_independent(audio_extractor):
    tone = 0.3 * np.sin(2 * np.pi * 150 * np.arange(RATE) / RATE)
    alone = audio_extractor.extract_all(AudioChunk(tone, RATE))[0]
    rows = []
    for start in range(0, RATE, 1600):  # interleave two sessions chunk by chunk
        audio_extractor.extract(AudioChunk(np.zeros(1600), RATE), session="other")
        rows.append(audio_extractor.extract(AudioChunk(tone[start : start + 1600], RATE), session="tone")[0])
    audio_extractor.close("other")
    rows.append(audio_extractor.flush("tone")[0])
    np.testing.assert_array_equal(np.concatenate(rows), alone)
    assert not {"tone", "other"} & set(audio_extractor.open_sessions)
