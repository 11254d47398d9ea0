"""The wire protocol: every message round-trips, every bad input is one ProtocolError that says what to send."""

import pickle

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grf_stream.serving import protocol as p

ADDRESS = {"v": 1, "session": "cam-7", "seq": 12, "ts": 1718.25}
# A JPEG's start and frame header (SOF0: 8-bit, 2 rows, 4 columns, 3 components), then not a whole JPEG:
# the server decodes it later.
JPEG_HEADER = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x02\x00\x04\x03" + bytes(9)
JPEG = JPEG_HEADER + b" the rest of the file"
PCM = np.arange(-4, 4, dtype="<i2").tobytes()
FEATURES = np.arange(6, dtype="<f4").tobytes()  # shape [3, 2]


def wire(type_: str, **fields) -> dict:
    return {**ADDRESS, "type": type_, **fields}


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


VALID = {  # one valid wire map per client message form
    "hello": wire("hello", modalities=["text", "audio"], window="window"),
    "video_jpeg": wire("video", jpeg=JPEG),
    "video_raw": wire("video", frame=bytes(range(24)), shape=[2, 4, 3]),
    "audio": wire("audio", pcm=PCM, sample_rate=16000),
    "text": wire("text", text="I loved it"),
    "features": wire("features", modality="audio", data=FEATURES, shape=[3, 2], mask=b"\x01\x01\x00"),
    "signal": wire("signal", modality="pulse", data=FEATURES, shape=[3, 2], rate=4),
    "segment_end": wire("segment_end"),
    "bye": wire("bye"),
}

CLIENT_MESSAGES = [
    p.Hello("cam-7", 0, 1.5, ["text", "audio", "video"], "window", 44100, 0.5, True),
    p.Hello("cam-7", 0, 1.5, ["text"], "segment"),
    p.Video("cam-7", 1, 1.6, jpeg=JPEG),
    p.Video("cam-7", 2, 1.7, frame=np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)),
    p.Video("cam-7", 3, 1.8, frame=np.zeros((5, 7), dtype=np.uint8)),
    p.Video("cam-7", 3, 1.8, frame=np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)[::2, ::3]),  # a view
    p.Audio("cam-7", 4, 1.9, np.array([-32768, -1, 0, 1, 32767], dtype=np.int16), 16000),
    p.Text("cam-7", 5, 2.0, "not bad at all ☺", final=False),
    p.Features("cam-7", 6, 2.1, "audio", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
               np.array([True, True, False, True])),
    p.Features("cam-7", 7, 2.2, "text", np.ones((1, 384), dtype=np.float32)),
    p.Signal("cam-7", 7, 2.25, "pulse", np.array([[71.0, 0.4], [72.5, 0.41]], dtype=np.float32), 4.0),
    p.SegmentEnd("cam-7", 8, 2.3),
    p.Bye("cam-7", 9, 2.4),
]

REPLIES = [
    p.Welcome("cam-7", 0, 1.5, ["audio", "text"],
              {"audio": {"extractor": "logmel", "version": 1, "size": 80, "rate": 100.0}},
              {"max_message_bytes": 8 * 1024 * 1024, "max_window_s": 60.0}, p.VERSION),
    p.Prediction("cam-7", 6, 2.1, 0, 1, "audio", ["audio"], -0.75, 0.0, 3.2),
    p.Prediction("cam-7", 7, 2.2, 0, 2, "text", ["audio", "text"], 1.25, 0.41, 1.0),
    p.Error("cam-7", 4, 2.0, p.BAD_JPEG, "the JPEG could not be decoded: send a baseline JPEG"),
    p.Error(None, None, 2.0, p.BAD_MSGPACK, "not msgpack"),
    p.Closed("cam-7", 9, 2.4, "bye", {"steps": 2, "drops_video": 3, "errors": 1}),
]


def rejection(data, limits=p.Limits(), decoder=p.decode) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        decoder(data, limits)
    return info.value


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(message):
    decoded = p.decode(p.encode(message))
    assert type(decoded) is type(message) and decoded == message


@pytest.mark.parametrize("message", REPLIES, ids=lambda m: type(m).__name__)
def test_replies_round_trip(message):
    decoded = p.decode_reply(p.encode(message))
    assert type(decoded) is type(message) and decoded == message


@pytest.mark.parametrize("name", VALID)
def test_every_valid_wire_form_decodes(name):
    assert isinstance(p.decode(pack(VALID[name])), p.Message)


def test_arrays_decode_to_read_only_views_of_the_received_bytes():
    video = p.decode(pack(VALID["video_raw"]))
    assert video.frame.dtype == np.uint8 and video.frame.shape == (2, 4, 3) and video.jpeg is None
    assert video.frame[1, 0].tolist() == [12, 13, 14]  # rows first, channels last
    audio = p.decode(pack(VALID["audio"]))
    assert audio.pcm.dtype == np.int16 and audio.pcm.tolist() == list(range(-4, 4))
    features = p.decode(pack(VALID["features"]))
    assert features.features.dtype == np.float32 and features.features.shape == (3, 2)
    assert features.mask.tolist() == [True, True, False]
    for array in (video.frame, audio.pcm, features.features):
        assert not array.flags.writeable  # frozen message, frozen data


def test_optional_fields_take_their_defaults():
    hello = p.decode(pack(VALID["hello"]))
    assert (hello.sample_rate, hello.window_s, hello.carry_context) == (16000, 1.0, False)
    assert p.decode(pack(VALID["text"])).final is True
    unmasked = p.decode(pack({**VALID["features"], "mask": None}))
    assert unmasked.mask.tolist() == [True, True, True]


def test_unknown_keys_are_ignored_and_an_int_is_a_float():
    message = p.decode(pack({**VALID["text"], "ts": 3, "lang": "en", "future": {"x": [1, 2]}}))
    assert message == p.Text("cam-7", 12, 3.0, "I loved it") and isinstance(message.ts, float)


def test_encode_takes_numpy_scalars_and_refuses_wrong_dtypes():
    prediction = p.Prediction("s", 1, 0.0, 0, 1, "audio", ["audio"], np.float32(0.5), np.float64(0.25), 1.0)
    assert p.decode_reply(p.encode(prediction)).value == 0.5
    with pytest.raises(TypeError, match="int16"):
        p.encode(p.Audio("s", 1, 0.0, np.zeros(4, dtype=np.float32), 16000))
    with pytest.raises(TypeError, match="protocol message"):
        p.encode({"type": "hello"})


def test_messages_compare_arrays_by_value():
    a = p.Features("s", 1, 0.0, "audio", np.zeros((2, 3), dtype=np.float32))
    assert a == p.Features("s", 1, 0.0, "audio", np.zeros((2, 3), dtype=np.float32))
    assert a != p.Features("s", 1, 0.0, "audio", np.ones((2, 3), dtype=np.float32))
    assert a != p.Features("s", 1, 0.0, "audio", np.zeros((3, 2), dtype=np.float32))


def test_protocol_error_survives_pickling():
    error = pickle.loads(pickle.dumps(p.ProtocolError(p.BAD_FIELD, "send more", "cam-7", 3)))
    assert (error.code, error.message, error.session, error.seq) == (p.BAD_FIELD, "send more", "cam-7", 3)


def test_codes_are_a_documented_closed_set():
    constants = {value for name, value in vars(p).items() if name.isupper() and isinstance(value, str)
                 and value in p.CODES}
    assert constants == set(p.CODES) and p.DECODE_CODES < set(p.CODES)
    assert all(code == code.lower() and " " not in code for code in p.CODES)


# -- rejections -------------------------------------------------------------------------------------

REQUIRED = {  # type -> its required fields besides v and type
    "hello": ["session", "seq", "ts", "modalities", "window"],
    "audio": ["session", "seq", "ts", "pcm"],
    "text": ["session", "seq", "ts", "text"],
    "features": ["session", "seq", "ts", "modality", "data", "shape"],
    "signal": ["session", "seq", "ts", "modality", "data", "shape", "rate"],
    "video_jpeg": ["session", "seq", "ts"],
    "segment_end": ["session", "seq", "ts"],
    "bye": ["session", "seq", "ts"],
}


@pytest.mark.parametrize("name,field", [(n, f) for n, fields in REQUIRED.items() for f in fields])
def test_each_missing_required_field_is_named(name, field):
    message = {k: v for k, v in VALID[name].items() if k != field}
    error = rejection(pack(message))
    assert error.code == p.MISSING_FIELD
    assert f"has no {field}" in error.message and "with v, type, session, seq, ts" in error.message
    assert error.session == (None if field == "session" else "cam-7")
    assert error.seq == (None if field == "seq" else 12)


BIG = p.Limits().max_message_bytes
# (id, message, code, words the message must contain); messages are maps unless bytes
BAD = [
    ("not msgpack", b"\xc1", p.BAD_MSGPACK, ["msgpack", "send one msgpack map"]),
    ("truncated", pack(VALID["text"])[:-3], p.BAD_MSGPACK, ["send one msgpack map"]),
    ("trailing bytes", pack(VALID["text"]) + b"\x00", p.BAD_MSGPACK, ["ExtraData"]),
    ("str not utf-8", b"\x81\xa1v\xa2\xff\xfe", p.BAD_MSGPACK, ["UTF-8"]),
    ("int map key", pack({1: 2}), p.BAD_MSGPACK, ["map key"]),
    ("ext type", pack(msgpack.ExtType(5, b"xx")), p.BAD_MSGPACK, ["no ext", "send one msgpack map"]),
    ("huge array header", b"\xdd\xff\xff\xff\xff", p.BAD_MSGPACK, ["max_array_len"]),
    ("deep nesting", b"\x91" * 100_000, p.BAD_MSGPACK, ["send one msgpack map"]),
    ("a list", pack([1, 2]), p.BAD_MSGPACK, ["array, not a map", "v, type, session, seq and ts"]),
    ("a str", pack("hello"), p.BAD_MSGPACK, ["str, not a map"]),
    ("oversized", b"\x00" * (BIG + 1), p.TOO_LARGE, [f"{BIG + 1} bytes", f"limit is {BIG}", "smaller"]),
    ("no version", {k: v for k, v in VALID["bye"].items() if k != "v"}, p.BAD_VERSION, ["no protocol version", "v=1"]),
    ("version 2", {**VALID["bye"], "v": 2}, p.BAD_VERSION, ["v 2 is not accepted", "send v=1"]),
    ("version true", {**VALID["bye"], "v": True}, p.BAD_VERSION, ["True (bool)", "send v=1"]),
    ("version str", {**VALID["bye"], "v": "1"}, p.BAD_VERSION, ["'1'", "send v=1"]),
    ("no type", {k: v for k, v in VALID["bye"].items() if k != "type"}, p.MISSING_FIELD, ["no type", "hello"]),
    ("unknown type", {**VALID["bye"], "type": "dance"}, p.UNKNOWN_TYPE, ["'dance'", "hello, video, audio"]),
    ("server type", {**VALID["bye"], "type": "welcome"}, p.UNKNOWN_TYPE, ["'welcome'", "segment_end, bye"]),
    ("list type", {**VALID["bye"], "type": ["bye"]}, p.UNKNOWN_TYPE, ["(array)", "send one of"]),
    ("session empty", {**VALID["bye"], "session": ""}, p.BAD_FIELD, ["session ''", "non-empty str"]),
    ("session long", {**VALID["bye"], "session": "x" * 129}, p.BAD_FIELD, ["at most 128 characters"]),
    ("session int", {**VALID["bye"], "session": 7}, p.BAD_FIELD, ["session 7", "str"]),
    ("seq bool", {**VALID["bye"], "seq": True}, p.BAD_FIELD, ["seq True (bool)", "int >= 0"]),
    ("seq negative", {**VALID["bye"], "seq": -1}, p.BAD_FIELD, ["seq -1", "int >= 0"]),
    ("seq float", {**VALID["bye"], "seq": 3.0}, p.BAD_FIELD, ["seq 3.0", "int >= 0"]),
    ("ts str", {**VALID["bye"], "ts": "now"}, p.BAD_FIELD, ["ts 'now'", "number"]),
    ("ts bool", {**VALID["bye"], "ts": False}, p.BAD_FIELD, ["ts False (bool)", "number"]),
    ("ts nan", {**VALID["bye"], "ts": float("nan")}, p.NOT_FINITE, ["ts nan", "finite"]),
    ("ts inf", {**VALID["bye"], "ts": float("inf")}, p.NOT_FINITE, ["ts inf", "finite"]),
    ("modalities str", {**VALID["hello"], "modalities": "text"}, p.BAD_FIELD, ["modalities 'text'", "array"]),
    ("modalities empty", {**VALID["hello"], "modalities": []}, p.BAD_FIELD, ["modalities []", "non-empty array"]),
    ("modality twice", {**VALID["hello"], "modalities": ["a", "a"]}, p.BAD_FIELD, ["['a', 'a']", "once"]),
    ("modality blank", {**VALID["hello"], "modalities": [""]}, p.BAD_FIELD, ["modalities entry ''", "non-empty"]),
    ("window policy", {**VALID["hello"], "window": "sliding"}, p.BAD_FIELD, ["'sliding'", "'segment', 'window'"]),
    ("window_s zero", {**VALID["hello"], "window_s": 0}, p.BAD_FIELD, ["window_s 0", "0.03333 <= window_s <= 60"]),
    ("window_s bool", {**VALID["hello"], "window_s": True}, p.BAD_FIELD, ["window_s True (bool)", "number"]),
    ("carry_context int", {**VALID["hello"], "carry_context": 1}, p.BAD_FIELD, ["carry_context 1", "true or false"]),
    ("hello rate", {**VALID["hello"], "sample_rate": 96000}, p.BAD_FIELD, ["96000", "8000-48000 Hz"]),
    ("audio rate 0", {**VALID["audio"], "sample_rate": 0}, p.BAD_FIELD,
     ["audio sample_rate 0 is not accepted", "PCM16 mono at 8000-48000 Hz"]),
    ("audio rate float", {**VALID["audio"], "sample_rate": 16000.0}, p.BAD_FIELD, ["16000.0", "an int"]),
    ("audio rate bool", {**VALID["audio"], "sample_rate": True}, p.BAD_FIELD, ["True (bool)", "8000-48000 Hz"]),
    ("pcm as str", {**VALID["audio"], "pcm": "abcd"}, p.BAD_FIELD, ["pcm 'abcd'", "bin (bytes)"]),
    ("pcm empty", {**VALID["audio"], "pcm": b""}, p.BAD_FIELD, ["<0 bytes>", "at least one PCM16 sample"]),
    ("pcm odd length", {**VALID["audio"], "pcm": b"\x00\x01\x02"}, p.BAD_DTYPE, ["<3 bytes>", "2 bytes per sample"]),
    ("text empty", {**VALID["text"], "text": ""}, p.BAD_FIELD, ["text ''", "non-space character"]),
    ("text blank", {**VALID["text"], "text": " \n\t"}, p.BAD_FIELD, ["text ' \\n\\t'", "non-space character"]),
    ("text bytes", {**VALID["text"], "text": b"hi"}, p.BAD_FIELD, ["<2 bytes>", "send a str"]),
    ("text too long", {**VALID["text"], "text": "a" * 2_001}, p.TOO_LARGE, ["at most 2000 characters"]),
    ("final str", {**VALID["text"], "final": "yes"}, p.BAD_FIELD, ["final 'yes'", "true or false"]),
    ("jpeg no magic", {**VALID["video_jpeg"], "jpeg": b"\x89PNG...."}, p.BAD_FIELD, ["<8 bytes>", "FF D8"]),
    ("jpeg empty", {**VALID["video_jpeg"], "jpeg": b""}, p.BAD_FIELD, ["<0 bytes>", "FF D8"]),
    ("jpeg as str", {**VALID["video_jpeg"], "jpeg": "\xff\xd8"}, p.BAD_FIELD, ["jpeg", "bin (bytes)"]),
    ("video nothing", wire("video"), p.MISSING_FIELD, ["neither jpeg nor frame", "shape [H, W, 3] or [H, W]"]),
    ("video both", {**VALID["video_raw"], "jpeg": JPEG}, p.BAD_FIELD, ["both jpeg and frame", "one of them"]),
    ("frame no shape", {**VALID["video_raw"], "shape": None}, p.MISSING_FIELD, ["no shape", "[H, W, 3] or [H, W]"]),
    ("frame bytes short", {**VALID["video_raw"], "frame": bytes(23)}, p.BAD_SHAPE,
     ["23 bytes", "[2, 4, 3] needs 24", "H*W*C uint8"]),
    ("frame 4 channels", {**VALID["video_raw"], "shape": [2, 3, 4]}, p.BAD_SHAPE, ["[2, 3, 4]", "[H, W, 3]"]),
    ("frame zero side", {**VALID["video_raw"], "shape": [0, 4, 3]}, p.BAD_SHAPE, ["[0, 4, 3]", "every side >= 1"]),
    ("frame 1-d", {**VALID["video_raw"], "shape": [24]}, p.BAD_SHAPE, ["[24]", "[H, W, 3] or [H, W]"]),
    ("frame too wide", {**VALID["video_raw"], "shape": [2, 5000, 3]}, p.TOO_LARGE, ["[2, 5000, 3]", "4096"]),
    ("frame shape str", {**VALID["video_raw"], "shape": "2x4x3"}, p.BAD_FIELD, ["'2x4x3'", "array of ints"]),
    ("frame shape bools", {**VALID["video_raw"], "shape": [True, 4, 3]}, p.BAD_FIELD, ["array of ints"]),
    ("frame dtype", {**VALID["video_raw"], "dtype": "float32"}, p.BAD_DTYPE, ["'float32'", "dtype 'uint8'"]),
    ("features 3-d", {**VALID["features"], "shape": [3, 2, 1]}, p.BAD_SHAPE, ["[3, 2, 1]", "[T, d]"]),
    ("features zero steps", {**VALID["features"], "shape": [0, 2]}, p.BAD_SHAPE, ["[0, 2]", "every side >= 1"]),
    ("features too many steps", {**VALID["features"], "shape": [10_001, 2]}, p.TOO_LARGE,
     ["[10001, 2]", "[10000, 4096]"]),
    ("features too wide", {**VALID["features"], "shape": [3, 4097]}, p.TOO_LARGE, ["[3, 4097]", "[10000, 4096]"]),
    ("features bytes short", {**VALID["features"], "data": FEATURES[:-1]}, p.BAD_SHAPE,
     ["23 bytes", "[3, 2] needs 24", "float32"]),
    ("features dtype", {**VALID["features"], "dtype": "float16"}, p.BAD_DTYPE, ["'float16'", "little-endian float32"]),
    ("signal 1-d", {**VALID["signal"], "shape": [6]}, p.BAD_SHAPE, ["[6]", "[T, C]"]),
    ("signal bytes short", {**VALID["signal"], "data": FEATURES[:-4]}, p.BAD_SHAPE, ["20 bytes", "T*C"]),
    ("signal rate zero", {**VALID["signal"], "rate": 0}, p.BAD_FIELD, ["rate 0", "0 < rate"]),
    ("signal rate nan", {**VALID["signal"], "rate": float("nan")}, p.NOT_FINITE, ["finite"]),
    ("signal nan", {**VALID["signal"], "data": np.array([1, 2, 3, np.nan, 5, 6], "<f4").tobytes()}, p.NOT_FINITE,
     ["step 1, dim 1", "one row a sample"]),
    ("features nan", {**VALID["features"], "data": np.array([0, 1, np.nan, 3, 4, 5], "<f4").tobytes()},
     p.NOT_FINITE, ["1 NaN or infinite", "step 1, dim 0", "send finite float32"]),
    ("features inf", {**VALID["features"], "data": np.array([0, 1, 2, 3, 4, -np.inf], "<f4").tobytes()},
     p.NOT_FINITE, ["step 2, dim 1", "send finite float32"]),
    ("mask length", {**VALID["features"], "mask": b"\x01\x01"}, p.BAD_SHAPE, ["2 bytes for 3 steps", "one uint8"]),
    ("mask values", {**VALID["features"], "mask": b"\x01\x02\x00"}, p.BAD_FIELD, ["holds 2", "1 for a valid step"]),
    ("modality blank", {**VALID["features"], "modality": ""}, p.BAD_FIELD, ["modality ''", "non-empty str"]),
    ("data as list", {**VALID["features"], "data": [0.0] * 6}, p.BAD_FIELD, ["(array)", "bin (bytes)"]),
]


@pytest.mark.parametrize("case", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_one_protocol_error_that_says_what_to_send(case):
    _, message, code, words = case
    data = message if isinstance(message, bytes) else pack(message)
    error = rejection(data)
    assert error.code == code, error.message
    assert error.code in p.DECODE_CODES
    assert "send" in error.message, error.message  # every message says what is accepted
    for word in words:
        assert word in error.message, (word, error.message)
    fields = message if isinstance(message, dict) else {}  # bytes: nothing was readable
    assert error.session == ("cam-7" if fields.get("session") == "cam-7" else None)
    assert error.seq == (12 if fields.get("seq") == 12 else None)
    assert str(error) == f"{code}: {error.message}"


def test_an_unreadable_seq_still_leaves_the_session_readable():
    error = rejection(pack({**VALID["bye"], "seq": "x", "v": 9}))
    assert (error.code, error.session, error.seq) == (p.BAD_VERSION, "cam-7", None)


def test_limits_are_the_callers():
    limits = p.Limits(max_message_bytes=64, max_text_chars=5, max_frame_side=2)
    assert rejection(pack(VALID["features"]), limits).code == p.TOO_LARGE  # 114 bytes
    assert "limit is 64" in rejection(pack(VALID["features"]), limits).message
    assert rejection(pack({**VALID["text"], "text": "abcdef"}), limits).code == p.TOO_LARGE
    assert rejection(pack(VALID["video_raw"]), limits).code == p.TOO_LARGE
    assert p.decode(pack(VALID["audio"]), p.Limits(min_sample_rate=16000, max_sample_rate=16000))
    assert rejection(pack(VALID["audio"]), p.Limits(max_sample_rate=8000)).message.endswith("8000-8000 Hz (an int)")


def test_a_jpeg_is_sized_by_its_header_before_anything_is_decoded():
    bomb = JPEG_HEADER[:7] + (8000).to_bytes(2, "big") + (8000).to_bytes(2, "big") + JPEG_HEADER[11:]  # 629 B, 8000x8000
    error = rejection(pack({**VALID["video_jpeg"], "jpeg": bomb}))
    assert (error.code, error.session, error.seq) == (p.TOO_LARGE, "cam-7", 12)
    assert "8000x8000" in error.message and "up to 4096" in error.message
    assert p.jpeg_size(JPEG) == (2, 4)
    headless = b"\xff\xd8" + bytes(5) + JPEG_HEADER[2:]  # junk first: a decoder might skip it and find the header
    assert rejection(pack({**VALID["video_jpeg"], "jpeg": headless})).code == p.BAD_FIELD


def test_real_jpegs_are_sized_as_encoded():
    import cv2

    for flags in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        data = cv2.imencode(".jpg", np.zeros((360, 480, 3), np.uint8), flags)[1].tobytes()
        assert p.jpeg_size(data) == (360, 480)


def test_window_s_is_bounded_below_by_one_video_frame():
    assert rejection(pack({**VALID["hello"], "window_s": 1e-300})).code == p.BAD_FIELD
    assert p.decode(pack({**VALID["hello"], "window_s": 1 / 30})).window_s == 1 / 30


def test_decode_takes_bytes_only():
    assert rejection("not bytes").code == p.BAD_MSGPACK
    assert isinstance(p.decode(bytearray(pack(VALID["bye"]))), p.Bye)


def test_replies_are_checked_too():
    assert rejection(p.encode(CLIENT_MESSAGES[0]), decoder=p.decode_reply).code == p.UNKNOWN_TYPE
    bad_value = {**msgpack.unpackb(p.encode(REPLIES[1])), "value": "high"}
    error = rejection(pack(bad_value), decoder=p.decode_reply)
    assert (error.code, error.session, error.seq) == (p.BAD_FIELD, "cam-7", 6)
    assert "prediction value 'high'" in error.message
    bad_stats = {**msgpack.unpackb(p.encode(REPLIES[-1])), "stats": {"steps": 1.5}}
    assert "closed stats['steps'] 1.5" in rejection(pack(bad_stats), decoder=p.decode_reply).message
    # a newer server's error codes and close reasons reach the client as they are
    future = {**msgpack.unpackb(p.encode(REPLIES[-1])), "reason": "migrated"}
    assert p.decode_reply(pack(future)).reason == "migrated"


# -- fuzz -------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELD_NAMES = ["v", "type", "session", "seq", "ts", "modalities", "sample_rate", "window", "window_s",
               "carry_context", "jpeg", "frame", "shape", "dtype", "pcm", "text", "final", "modality", "data",
               "mask", "feature_spec", "limits", "protocol", "segment", "step", "value", "gate",
               "latency_ms", "code", "message", "reason", "stats"]
TYPE_NAMES = list(p.CLIENT_TYPES) + list(p.REPLY_TYPES)
LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.integers(-2, 8)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.binary(max_size=48)
          | st.sampled_from([1, 16000, "segment", "window", "uint8", "float32", "audio", JPEG, PCM, FEATURES,
                             b"\x01\x00\x01", bytes(24), [3, 2], [2, 4, 3], ["text", "audio"], *TYPE_NAMES]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)
ADDRESS_NAMES = ["v", "type", "session", "seq", "ts"]


def mostly(valid: list) -> st.SearchStrategy:
    """A valid value 9 times in 10, anything else otherwise: most maps then reach the type's own fields."""
    return st.integers(0, 9).flatmap(lambda n: VALUES if n == 0 else st.sampled_from(valid))


MAPS = st.tuples(
    st.fixed_dictionaries({"v": mostly([1]), "type": mostly(TYPE_NAMES), "session": mostly(["cam-7"]),
                           "seq": mostly([0, 12]), "ts": mostly([0.5, 3])}),
    st.dictionaries(st.sampled_from([n for n in FIELD_NAMES if n not in ADDRESS_NAMES]), VALUES, max_size=8),
    st.dictionaries(st.sampled_from(ADDRESS_NAMES), st.none(), max_size=1),  # now and then one left out
).map(lambda parts: {key: value for key, value in {**parts[0], **parts[1]}.items() if key not in parts[2]})
ENCODED = [pack(m) for m in VALID.values()] + [p.encode(m) for m in CLIENT_MESSAGES + REPLIES]


def decodes_or_rejects(data: bytes) -> None:
    """The one property: a message or a ProtocolError with a decode code, never anything else."""
    for decoder in (p.decode, p.decode_reply):
        try:
            message = decoder(data)
        except p.ProtocolError as error:
            assert error.code in p.DECODE_CODES and error.message
            continue
        assert isinstance(message, p.Message)
        if decoder is p.decode:  # what was accepted survives a re-encode unchanged
            assert p.decode(p.encode(message)) == message


@st.composite
def mutations(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(ENCODED)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if operation == "flip" and data:
            data[where] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[where:]
        elif operation == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[where:where + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes(data):
    decodes_or_rejects(data)


@FUZZ
@given(MAPS)
def test_fuzz_maps_of_real_field_names(message):
    decodes_or_rejects(pack(message))


@FUZZ
@given(mutations())
def test_fuzz_mutated_valid_messages(data):
    decodes_or_rejects(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(1, 16), st.data())
def test_fuzz_feature_windows_round_trip(steps, size, data):
    values = data.draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                min_size=steps * size, max_size=steps * size))
    mask = data.draw(st.lists(st.booleans(), min_size=steps, max_size=steps))
    message = p.Features("s", 0, 0.0, "audio", np.array(values, np.float32).reshape(steps, size), np.array(mask))
    assert p.decode(p.encode(message)) == message


def test_stats_request_and_reply_round_trip():
    request = p.StatsRequest("monitor", 3, 1.5)
    assert p.decode(p.encode(request)) == request
    reply = p.ServerStats("monitor", 3, 2.0, {"active_sessions": 2.0, "latency_p99_ms": 12.5})
    assert p.decode_reply(p.encode(reply)) == reply
