"""The wire protocol: the one place where in-process messages become bytes and back.

Every message is one msgpack map, for example

    {"v": 1, "type": "audio", "session": "cam-7", "seq": 12, "ts": 1718.25,
     "pcm": b"<PCM16 little-endian mono>", "sample_rate": 16000}

- `v` is the protocol version: this module speaks VERSION (1) and rejects any other.
- `type` names the message; `session` (1..128 characters) names the client's stream; `seq` (int
  >= 0) increases within a session (the server checks the order, this module does not); `ts` is the
  capture time in seconds (finite; an int is accepted where a float is expected, a bool never is).
- Client -> server, read with `decode`: hello, video, audio, text, signal (a chunk of any other
  sampled sensor a served model fuses, e.g. a pulse), features, segment_end, bye, and stats (the
  server's live numbers; no session needs to be open).
  Server -> client, read with `decode_reply`: welcome, prediction, error, closed, server_stats.
  `encode` writes both, and `decode(encode(m)) == m`.
- Keys a type does not define are ignored, so that a newer peer can add optional fields without
  breaking an older one. A nil value counts as absent only for the optional fields whose default
  is None (video jpeg/frame/shape, features mask, error session/seq).

`decode` validates everything and raises one exception type, `ProtocolError(code, message, session,
seq)`: `code` is one of CODES, `message` says what was wrong and what is accepted, and `session` /
`seq` are set whenever the bad message had readable ones, so the server can address its error
reply. `decode_reply` checks the types of what the server sent (it trusts the server's values,
not its bytes), and leaves the open-ended sets, error codes and close reasons, open.

Messages are frozen dataclasses whose first fields are always (session, seq, ts); each field is
declared once, with the check its wire value passes and its default (`wire`), and the wire tables
are read off the classes (plus the bytes, shapes and dtypes that carry arrays). Raw video
frames, PCM audio and feature windows travel as little-endian bytes plus a shape, and decode to
read-only numpy views of the received bytes (no copy). Messages therefore compare by value (arrays
by dtype, shape and content) and are not hashable.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import msgpack
import numpy as np

VERSION = 1
MAX_SESSION_CHARS = 128
MAX_NAME_CHARS = 64  # modality names
JPEG_MAGIC = b"\xff\xd8"

# -- error codes: a closed set; `decode` raises the first group, the server the second ---------------

BAD_MSGPACK = "bad_msgpack"
BAD_VERSION = "bad_version"
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_SHAPE = "bad_shape"
BAD_DTYPE = "bad_dtype"
NOT_FINITE = "not_finite"
TOO_LARGE = "too_large"
UNKNOWN_MODALITY = "unknown_modality"
UNKNOWN_SESSION = "unknown_session"
SEQ_BACKWARDS = "seq_backwards"
BAD_JPEG = "bad_jpeg"
BUSY = "busy"
BAD_STATE = "bad_state"
INTERNAL = "internal"

CODES: dict[str, str] = {
    BAD_MSGPACK: "the bytes are not one msgpack map (or a str in it is not UTF-8)",
    BAD_VERSION: "no protocol version v, or one this server does not speak",
    UNKNOWN_TYPE: "type is not one of the message types this side reads",
    MISSING_FIELD: "a required field is absent",
    BAD_FIELD: "a field has the wrong type or a value out of range",
    BAD_SHAPE: "a frame or feature shape is malformed or does not match its bytes",
    BAD_DTYPE: "bytes that cannot hold the element type (odd PCM16 length, unsupported dtype)",
    NOT_FINITE: "a NaN or infinity where finite numbers are required",
    TOO_LARGE: "the message or one of its parts is over a limit",
    UNKNOWN_MODALITY: "(server) a modality the model does not fuse or the session did not open",
    UNKNOWN_SESSION: "(server) a message for a session that was never opened with hello",
    SEQ_BACKWARDS: "(server) seq did not increase within the session",
    BAD_JPEG: "(server) the JPEG bytes could not be decoded",
    BUSY: "(server) too many sessions: try again later",
    BAD_STATE: "(server) a message the session cannot take now (e.g. a second hello)",
    INTERNAL: "(server) the server failed; the session goes on",
}
DECODE_CODES = frozenset({BAD_MSGPACK, BAD_VERSION, UNKNOWN_TYPE, MISSING_FIELD, BAD_FIELD, BAD_SHAPE,
                          BAD_DTYPE, NOT_FINITE, TOO_LARGE})
CLOSE_REASONS = ("bye", "idle_timeout", "server_shutdown")
WINDOW_POLICIES = ("segment", "window")


class ProtocolError(ValueError):
    """A message that cannot be accepted. `code` is one of CODES; `message` says what to send instead."""

    def __init__(self, code: str, message: str, session: str | None = None, seq: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.session, self.seq = code, message, session, seq

    def __reduce__(self):  # keep all four fields when pickled (e.g. across Ray processes)
        return ProtocolError, (self.code, self.message, self.session, self.seq)


@dataclass(frozen=True)
class Limits:
    """What `decode` accepts, and what one step may carry; the server sends these in its welcome."""

    max_message_bytes: int = 8 * 1024 * 1024  # checked before unpacking
    max_items: int = 1024  # entries in any one msgpack array or map
    max_frame_side: int = 4096  # raw frames, and JPEGs by the size their header declares
    max_feature_steps: int = 10_000
    max_feature_size: int = 4096
    max_text_chars: int = 2_000  # a phrase; at most about one text row (word piece) per character
    min_sample_rate: int = 8000
    max_sample_rate: int = 48000
    min_window_s: float = 1 / 30  # one video frame: a shorter window would make a step of every audio row
    max_window_s: float = 60.0  # a longer window would buffer minutes of raw media per session
    max_step_rows: int = 6_000  # feature rows one step may carry: a segment's held rows, a phrase, a features message
    max_phrase_rows: int = 512  # rows (word pieces) of one phrase: its step's cost grows with their square



# -- field checks: (value, where, limits) -> the in-process value, or _Invalid -------------------------


class _Invalid(Exception):
    """A problem found inside a message; `_decode` turns it into a ProtocolError with its address."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 6, 4, 2
_WIRE_TYPES = {type(None): "nil", bool: "bool", int: "int", float: "float", str: "str", bytes: "bin",
               list: "array", dict: "map"}


def _show(value: Any) -> str:
    """A value as an error message shows it: short (the message may be megabytes), typed where unclear."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    shown = _SHORT.repr(value)
    if isinstance(value, (str, float)) or type(value) is int:
        return shown
    return f"{shown} ({_wire_type(value)})"


def _wire_type(value: Any) -> str:
    return _WIRE_TYPES.get(type(value), type(value).__name__)


def _reject(code: str, where: str, value: Any, accepted: str):
    raise _Invalid(code, f"{where} {_show(value)} is not accepted: {accepted}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to us


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _session_id(value, where, limits):
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SESSION_CHARS:
        _reject(BAD_FIELD, where, value, f"send a non-empty str of at most {MAX_SESSION_CHARS} characters")
    return value


def _seq_number(value, where, limits):
    if not _is_int(value) or value < 0:
        _reject(BAD_FIELD, where, value, "send an int >= 0 that increases within the session")
    return value


def _finite_number(value, where, limits):
    if not _is_number(value):
        _reject(BAD_FIELD, where, value, "send a number (float or int)")
    if not math.isfinite(value):
        _reject(NOT_FINITE, where, value, "send a finite number")
    return float(value)


def _boolean(value, where, limits):
    if not isinstance(value, bool):
        _reject(BAD_FIELD, where, value, "send true or false")
    return value


def _one_of(*choices: str):
    def check(value, where, limits):
        if not isinstance(value, str) or value not in choices:
            _reject(BAD_FIELD, where, value, f"send one of {', '.join(map(repr, choices))}")
        return value
    return check


def _name(value, where, limits):
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        _reject(BAD_FIELD, where, value, f"send a non-empty str of at most {MAX_NAME_CHARS} characters")
    return value


def _names(value, where, limits):
    if not isinstance(value, list) or not value:
        _reject(BAD_FIELD, where, value, 'send a non-empty array of modality names, e.g. ["text", "audio"]')
    names = [_name(name, f"{where} entry", limits) for name in value]
    if len(set(names)) != len(names):
        _reject(BAD_FIELD, where, value, "send each modality once")
    return names


def _sample_rate(value, where, limits):
    if not _is_int(value) or not limits.min_sample_rate <= value <= limits.max_sample_rate:
        _reject(BAD_FIELD, where, value,
                f"send PCM16 mono at {limits.min_sample_rate}-{limits.max_sample_rate} Hz (an int)")
    return value


def _window_seconds(value, where, limits):
    seconds = _finite_number(value, where, limits)
    if not limits.min_window_s <= seconds <= limits.max_window_s:
        _reject(BAD_FIELD, where, value, f"send seconds with {limits.min_window_s:.4g} <= window_s <= "
                                         f"{limits.max_window_s:g}")
    return seconds


def _signal_rate(value, where, limits):
    rate = _finite_number(value, where, limits)
    if not 0 < rate <= limits.max_sample_rate:
        _reject(BAD_FIELD, where, value, f"send the samples a second, 0 < rate <= {limits.max_sample_rate}")
    return rate


def _dtype(name: str, layout: str):
    def check(value, where, limits):
        if not isinstance(value, str) or value != name:
            _reject(BAD_DTYPE, where, value, f"send {layout} (dtype {name!r})")
        return value
    return check


def _binary(value, where, limits):
    if not isinstance(value, bytes):
        _reject(BAD_FIELD, where, value, "send msgpack bin (bytes), not str or array")
    return value


def _jpeg(value, where, limits):
    if not _binary(value, where, limits) or not value.startswith(JPEG_MAGIC):
        _reject(BAD_FIELD, where, value, "send the bytes of a JPEG file (they start with FF D8)")
    size = jpeg_size(value)
    if size is None:
        _reject(BAD_FIELD, where, value, "send a whole JPEG file: no frame header (SOF) was found before its data")
    if max(size) > limits.max_frame_side:
        _reject(TOO_LARGE, where, value, f"its header declares {size[1]}x{size[0]} pixels: send frames with sides "
                                         f"up to {limits.max_frame_side}")
    return value


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers; C4/C8/CC are not
_START_OF_SCAN = 0xDA


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, read without decoding anything; None if there is none.

    After FF D8 a JPEG is a chain of segments, FF <marker> <2-byte big-endian length> <payload>; the
    frame header (an SOF segment) holds precision (1 byte), height and width (2 bytes each).
    """
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF_MARKERS:
            if at + 9 > len(data):
                return None
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        if marker == _START_OF_SCAN or length < 2:
            return None
        at += 2 + length
    return None


def _pcm16(value, where, limits):
    if not _binary(value, where, limits):
        _reject(BAD_FIELD, where, value, "send at least one PCM16 sample")
    if len(value) % 2:
        _reject(BAD_DTYPE, where, value, "PCM16 has 2 bytes per sample: send whole little-endian int16 samples")
    return np.frombuffer(value, dtype="<i2")


def _text(value, where, limits):
    if not isinstance(value, str) or not value.strip():
        _reject(BAD_FIELD, where, value, "send a str with at least one non-space character")
    if len(value) > limits.max_text_chars:
        _reject(TOO_LARGE, where, value, f"send at most {limits.max_text_chars} characters per message")
    return value


def _int_list(value, where, limits):
    if not isinstance(value, list) or not all(_is_int(n) for n in value):
        _reject(BAD_FIELD, where, value, "send an array of ints")
    return tuple(value)


def _string(value, where, limits):
    if not isinstance(value, str):
        _reject(BAD_FIELD, where, value, "send a str")
    return value


def _integer(value, where, limits):
    if not _is_int(value):
        _reject(BAD_FIELD, where, value, "send an int")
    return value


def _number(value, where, limits):
    if not _is_number(value):
        _reject(BAD_FIELD, where, value, "send a number (float or int)")
    return float(value)


def _strings(value, where, limits):
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        _reject(BAD_FIELD, where, value, "send an array of str")
    return value


def _map_of(value_check):
    def check(value, where, limits):
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            _reject(BAD_FIELD, where, value, "send a map with str keys")
        return {key: value_check(item, f"{where}[{key!r}]", limits) for key, item in value.items()}
    return check


def _anything(value, where, limits):
    return value


_map = _map_of(_anything)


def _nullable(check):
    def nullable(value, where, limits):
        return None if value is None else check(value, where, limits)
    return nullable



# -- messages: each field with the check its wire value passes -------------------------------------


def wire(check: Callable[[Any, str, Limits], Any], default: Any = dataclasses.MISSING, *,
         absent: Any = dataclasses.MISSING):
    """A message field as the wire carries it: the check its value must pass, its default, and its
    value when the wire leaves it out (the default, unless `absent` says otherwise; none: required)."""
    absent = default if absent is dataclasses.MISSING else absent
    return field(default=default, metadata={"check": check, "absent": absent})


@dataclass(frozen=True, eq=False)
class Message:
    """What every message carries: the client's stream, its position in it, the capture time."""

    session: str = wire(_session_id)
    seq: int = wire(_seq_number)
    ts: float = wire(_finite_number)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    __hash__ = None  # mutable lists and arrays inside: compare by value, never hash


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b))
    return a == b


@dataclass(frozen=True, eq=False)
class Hello(Message):
    """Opens a session: what the client will send and how its data become fusion steps."""

    modalities: list[str] = wire(_names)
    window: str = wire(_one_of(*WINDOW_POLICIES))  # "segment" (one step per modality per segment) or "window"
    sample_rate: int = wire(_sample_rate, 16000)  # Hz of the audio the client will send
    window_s: float = wire(_window_seconds, 1.0)
    carry_context: bool = wire(_boolean, False)  # False: the context restarts at each segment


@dataclass(frozen=True, eq=False)
class Video(Message):
    """One webcam frame: JPEG bytes (decoded by the server) or a raw uint8 frame (H, W, 3) or (H, W)."""

    jpeg: bytes | None = wire(_jpeg, None)
    frame: np.ndarray | None = wire(_binary, None)  # on the wire: its bytes, with shape and dtype


@dataclass(frozen=True, eq=False)
class Audio(Message):
    """A chunk of microphone audio, PCM16 mono."""

    pcm: np.ndarray = wire(_pcm16)  # (samples,) int16
    sample_rate: int | None = wire(_sample_rate, None)  # Hz; left out: the rate the session's hello named


@dataclass(frozen=True, eq=False)
class Text(Message):
    """A transcript phrase; `final` False marks a partial hypothesis that a later text replaces."""

    text: str = wire(_text)
    final: bool = wire(_boolean, True)


@dataclass(frozen=True, eq=False)
class Signal(Message):
    """A chunk of a sampled sensor signal (a modality without a message of its own, e.g. a pulse):
    `values` (T, channels) float32, sampled at `rate` Hz; its modality's extractor reads it."""

    modality: str = wire(_name)
    values: np.ndarray  # (T, C) float32; on the wire: data, shape, dtype
    rate: float = wire(_signal_rate)


@dataclass(frozen=True, eq=False)
class Features(Message):
    """A precomputed feature window of one modality; mask marks the valid steps (None: all)."""

    modality: str = wire(_name)
    features: np.ndarray  # (T, d) float32; on the wire: data, shape, dtype
    mask: np.ndarray | None = wire(_binary, None)  # (T,) bool; on the wire: a uint8 a step

    def __post_init__(self):
        if self.mask is None:
            object.__setattr__(self, "mask", np.ones(len(self.features), dtype=bool))


@dataclass(frozen=True, eq=False)
class SegmentEnd(Message):
    """The current segment is complete: fuse what is held and start a new one."""


@dataclass(frozen=True, eq=False)
class Bye(Message):
    """The client is done: the segment ends and the session closes."""


@dataclass(frozen=True, eq=False)
class StatsRequest(Message):
    """Ask for the server's live numbers; needs no open session (`session` names the asker)."""


@dataclass(frozen=True, eq=False)
class ServerMessage(Message):
    """A reply: the client checks its types and trusts its values (any number is a time)."""

    ts: float = wire(_number)


@dataclass(frozen=True, eq=False)
class Welcome(ServerMessage):
    """Answer to hello: what the model fuses, with which features, under which limits."""

    modalities: list[str] = wire(_strings)
    feature_spec: dict[str, dict] = wire(_map_of(_map))  # modality -> {extractor, version, size, rate}
    limits: dict[str, Any] = wire(_map)
    protocol: int = wire(_integer)


@dataclass(frozen=True, eq=False)
class Prediction(ServerMessage):
    """Sent after every fusion step."""

    segment: int = wire(_integer)
    step: int = wire(_integer)  # 1-based within the segment
    modality: str = wire(_string)  # fused by this step
    modalities: list[str] = wire(_strings)  # held by the context so far
    value: float = wire(_number)  # sentiment
    gate: float = wire(_number)  # mean update gate of the step; 0 for a segment's first step
    latency_ms: float = wire(_number)  # at the server: from the step's features being ready to this reply


@dataclass(frozen=True, eq=False)
class Error(ServerMessage):
    """A message was refused; the session goes on. session/seq are None where they were unreadable."""

    session: str | None = wire(_nullable(_session_id), absent=None)
    seq: int | None = wire(_nullable(_seq_number), absent=None)
    code: str = wire(_string)
    message: str = wire(_string)


@dataclass(frozen=True, eq=False)
class Closed(ServerMessage):
    """The session is over; `reason` is one of CLOSE_REASONS, `stats` counts steps, drops, errors."""

    reason: str = wire(_string)
    stats: dict[str, int] = wire(_map_of(_integer))


@dataclass(frozen=True, eq=False)
class ServerStats(ServerMessage):
    """The server's live numbers: sessions, steps per second, latency percentiles, drops, errors."""

    numbers: dict[str, float] = wire(_map_of(_number))


ClientMessage = Union[Hello, Video, Audio, Text, Signal, Features, SegmentEnd, Bye, StatsRequest]
Reply = Union[Welcome, Prediction, Error, Closed, ServerStats]


# -- per-type specs ---------------------------------------------------------------------------------

_REQUIRED = object()  # a field's value when absent, where the message must carry it


@dataclass(frozen=True)
class _Field:
    name: str
    check: Callable[[Any, str, Limits], Any]
    default: Any = _REQUIRED


@dataclass(frozen=True)
class _Kind:
    """One message type: its class, its wire fields (after v and type) and how wire and class differ."""

    cls: type
    fields: tuple[_Field, ...]
    build: Callable[[dict, Limits], Message] | None = None  # checked wire values -> message; None: cls(**values)
    to_wire: Callable[[Any], dict] | None = None  # message -> wire values; None: its dataclass fields


def _kind(cls: type, *wire_only: _Field, build=None, to_wire=None) -> _Kind:
    """A message type's wire fields: its fields declared with `wire`, in order, then the ones only the
    wire has (bytes, shapes and dtypes of arrays, which `build` turns into the class's fields)."""
    declared = tuple(_Field(f.name, f.metadata["check"], _REQUIRED if f.metadata["absent"] is dataclasses.MISSING
                            else f.metadata["absent"]) for f in dataclasses.fields(cls) if "check" in f.metadata)
    return _Kind(cls, declared + wire_only, build, to_wire)


def _frame_from_wire(values: dict, limits: Limits) -> Video:
    jpeg, frame, shape = values.pop("jpeg"), values.pop("frame"), values.pop("shape")
    values.pop("dtype")
    if jpeg is not None and frame is not None:
        raise _Invalid(BAD_FIELD, "video has both jpeg and frame: send one of them")
    if jpeg is None and frame is None:
        raise _Invalid(MISSING_FIELD, "video has neither jpeg nor frame: send jpeg (JPEG bytes) "
                                      "or frame (raw uint8 pixels) with shape [H, W, 3] or [H, W]")
    if frame is None:
        return Video(**values, jpeg=jpeg)
    if shape is None:
        raise _Invalid(MISSING_FIELD, "video frame has no shape: send shape [H, W, 3] or [H, W] with it")
    if len(shape) == 3 and shape[2] != 3:
        _reject(BAD_SHAPE, "video shape", list(shape), "send [H, W, 3] (three colour channels) or [H, W] (gray)")
    side = limits.max_frame_side
    _check_sides(shape, "video shape", (2, 3), (side, side, 3), "[H, W, 3] or [H, W]")
    if len(frame) != math.prod(shape):
        raise _Invalid(BAD_SHAPE, f"video frame has {len(frame)} bytes but shape {list(shape)} needs "
                                  f"{math.prod(shape)}: send H*W*C uint8 bytes, rows first")
    return Video(**values, frame=np.frombuffer(frame, dtype=np.uint8).reshape(shape))


def _check_sides(shape: tuple, where: str, ranks: tuple, maxima: tuple, accepted: str) -> None:
    """Rank and sides of a shape: a zero or negative side is malformed, one over its limit too large."""
    if len(shape) not in ranks or any(side < 1 for side in shape):
        _reject(BAD_SHAPE, where, list(shape), f"send {accepted} with every side >= 1")
    for side, maximum in zip(shape, maxima):
        if side > maximum:
            _reject(TOO_LARGE, where, list(shape), f"send {accepted} with sides up to {list(maxima[:len(shape)])}")


def _frame_to_wire(message: Video) -> dict:
    if message.frame is None:
        return {"jpeg": message.jpeg}
    return {"frame": _wire_bytes(message.frame, "<u1", "video frame"), "shape": list(message.frame.shape),
            "dtype": "uint8"}


def _features_from_wire(values: dict, limits: Limits) -> Features:
    data, shape, mask = values.pop("data"), values.pop("shape"), values.pop("mask")
    values.pop("dtype")
    features = _float_rows(data, shape, "features", "T, d", limits, "and mark missing steps in mask")
    return Features(**values, features=features, mask=_mask_from_wire(mask, len(features)))


def _signal_from_wire(values: dict, limits: Limits) -> Signal:
    data, shape = values.pop("data"), values.pop("shape")
    values.pop("dtype")
    return Signal(**values, values=_float_rows(data, shape, "signal values", "T, C", limits, "one row a sample"))


def _float_rows(data: bytes, shape: tuple, what: str, axes: str, limits: Limits, hint: str) -> np.ndarray:
    """A (rows, columns) float32 array from its little-endian bytes: sides in range, every value finite."""
    _check_sides(shape, f"{what} shape", (2,), (limits.max_feature_steps, limits.max_feature_size), f"[{axes}]")
    steps, size = shape
    if len(data) != steps * size * 4:
        raise _Invalid(BAD_SHAPE, f"{what} data has {len(data)} bytes but shape {list(shape)} needs "
                                  f"{steps * size * 4}: send {axes.replace(', ', '*')} little-endian float32 "
                                  "values, steps first")
    rows = np.frombuffer(data, dtype="<f4").reshape(steps, size)
    bad = ~np.isfinite(rows)
    if bad.any():
        step, dim = np.argwhere(bad)[0]
        raise _Invalid(NOT_FINITE, f"{what} have {int(bad.sum())} NaN or infinite values (first at step "
                                   f"{step}, dim {dim}): send finite float32, {hint}")
    return rows


def _mask_from_wire(mask: bytes | None, steps: int) -> np.ndarray:
    if mask is None:
        return np.ones(steps, dtype=bool)
    if len(mask) != steps:
        raise _Invalid(BAD_SHAPE, f"features mask has {len(mask)} bytes for {steps} steps: send one uint8 per step")
    flags = np.frombuffer(mask, dtype=np.uint8)
    if (flags > 1).any():
        raise _Invalid(BAD_FIELD, f"features mask holds {int(flags.max())}: send 1 for a valid step, 0 for padding")
    return flags.astype(bool)


def _features_to_wire(message: Features) -> dict:
    return {"modality": message.modality, "data": _wire_bytes(message.features, "<f4", "features"),
            "shape": list(message.features.shape), "dtype": "float32",
            "mask": _wire_bytes(message.mask, "|b1", "features mask")}


def _signal_to_wire(message: Signal) -> dict:
    return {"modality": message.modality, "data": _wire_bytes(message.values, "<f4", "signal values"),
            "shape": list(message.values.shape), "dtype": "float32", "rate": message.rate}


def _audio_to_wire(message: Audio) -> dict:
    return {"pcm": _wire_bytes(message.pcm, "<i2", "audio pcm"), "sample_rate": message.sample_rate}


def _wire_bytes(array: np.ndarray, dtype: str, what: str) -> memoryview:
    """Little-endian C-order bytes; a different element type is the caller's mistake, never cast silently."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != np.dtype(dtype).kind \
            or array.dtype.itemsize != np.dtype(dtype).itemsize:
        raise TypeError(f"{what} must be a numpy array of {np.dtype(dtype).name}, got {_show(array)}")
    # a view, not .tobytes(): msgpack packs it as bin all the same, and a 640x480 frame encodes ~40x faster
    return np.ascontiguousarray(array, dtype=dtype).data.cast("B")


_FLOAT32 = _Field("dtype", _dtype("float32", "little-endian float32"), "float32")
_CLIENT: dict[str, _Kind] = {
    "hello": _kind(Hello),
    "video": _kind(Video, _Field("shape", _int_list, None), _Field("dtype", _dtype("uint8", "raw pixels as uint8"),
                   "uint8"), build=_frame_from_wire, to_wire=_frame_to_wire),
    "audio": _kind(Audio, to_wire=_audio_to_wire),
    "text": _kind(Text),
    "signal": _kind(Signal, _Field("data", _binary), _Field("shape", _int_list), _FLOAT32, build=_signal_from_wire,
                    to_wire=_signal_to_wire),
    "features": _kind(Features, _Field("data", _binary), _Field("shape", _int_list), _FLOAT32,
                      build=_features_from_wire, to_wire=_features_to_wire),
    "segment_end": _kind(SegmentEnd),
    "bye": _kind(Bye),
    "stats": _kind(StatsRequest),
}

_REPLY: dict[str, _Kind] = {
    "welcome": _kind(Welcome),
    "prediction": _kind(Prediction),
    "error": _kind(Error),
    "closed": _kind(Closed),
    "server_stats": _kind(ServerStats),
}

CLIENT_TYPES = tuple(_CLIENT)
REPLY_TYPES = tuple(_REPLY)
_TYPE_OF = {kind.cls: (name, kind) for name, kind in {**_CLIENT, **_REPLY}.items()}


# -- encode / decode --------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The msgpack bytes of any client or server message."""
    if type(message) not in _TYPE_OF:
        raise TypeError(f"encode takes a protocol message ({', '.join(c.__name__ for c in _TYPE_OF)}), "
                        f"got {type(message).__name__}")
    name, kind = _TYPE_OF[type(message)]
    wire = kind.to_wire(message) if kind.to_wire else {f.name: getattr(message, f.name)
                                                       for f in dataclasses.fields(message)}
    address = {"session": message.session, "seq": message.seq, "ts": message.ts}
    return msgpack.packb({"v": VERSION, "type": name, **address, **wire}, use_bin_type=True, default=_plain)


def _plain(value: Any) -> Any:
    """numpy scalars (a model's float32 output, say) as the Python numbers msgpack packs."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}: use str, int, float, bool, bytes, list or dict")


def decode(data: bytes, limits: Limits = Limits()) -> ClientMessage:
    """A client message from its bytes, fully validated; anything wrong raises ProtocolError."""
    return _decode(data, limits, _CLIENT)


def decode_reply(data: bytes, limits: Limits = Limits()) -> Reply:
    """A server message from its bytes (for clients); anything malformed raises ProtocolError."""
    return _decode(data, limits, _REPLY)


def _decode(data: bytes, limits: Limits, kinds: dict[str, _Kind]) -> Message:
    raw = _unpack(data, limits)
    session, seq = _address(raw, limits)
    try:
        _check_version(raw)
        name = raw.get("type")
        if "type" not in raw:
            raise _Invalid(MISSING_FIELD, f"message has no type: send one of {', '.join(kinds)}")
        if not isinstance(name, str) or name not in kinds:
            _reject(UNKNOWN_TYPE, "type", name, f"send one of {', '.join(kinds)}")
        kind = kinds[name]
        values = {field.name: _read(raw, field, name, kind, limits) for field in kind.fields}
        return kind.build(values, limits) if kind.build else kind.cls(**values)
    except _Invalid as problem:
        raise ProtocolError(problem.code, problem.message, session, seq) from None


def _unpack(data: bytes, limits: Limits) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(BAD_MSGPACK, f"decode takes bytes, got {type(data).__name__}: pass the received frame")
    if len(data) > limits.max_message_bytes:  # before unpacking: an oversized message costs nothing more
        raise ProtocolError(TOO_LARGE, f"message is {len(data)} bytes, the limit is {limits.max_message_bytes}: "
                                       "send smaller chunks (shorter audio, JPEG or smaller frames, fewer steps)")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=limits.max_message_bytes,
                              max_bin_len=limits.max_message_bytes, max_array_len=limits.max_items,
                              max_map_len=limits.max_items, max_ext_len=0)  # the protocol uses no ext types
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as error:
        # ExtraData, FormatError, StackError, UnicodeDecodeError, limits exceeded, non-str map keys ...
        raise ProtocolError(BAD_MSGPACK, f"not one valid msgpack value ({type(error).__name__}: "
                                         f"{str(error)[:120]}): send one msgpack map per message, with str "
                                         "keys, UTF-8 strings, bytes as bin and no ext types") from None
    if not isinstance(raw, dict):
        raise ProtocolError(BAD_MSGPACK, f"message is a msgpack {_wire_type(raw)}, not a map: send a msgpack "
                                         "map with v, type, session, seq and ts")
    return raw


def _address(raw: dict, limits: Limits) -> tuple[str | None, int | None]:
    """The session and seq of a message wherever they are readable, so an error reply can be addressed."""
    def readable(name: str, check):
        try:
            return check(raw.get(name), name, limits)
        except _Invalid:
            return None
    return readable("session", _session_id), readable("seq", _seq_number)


def _check_version(raw: dict) -> None:
    version = raw.get("v")
    if "v" not in raw:
        raise _Invalid(BAD_VERSION, f"message has no protocol version v: send v={VERSION}")
    if not _is_int(version) or version != VERSION:
        _reject(BAD_VERSION, "protocol version v", version, f"send v={VERSION}, the only version spoken here")


def _read(raw: dict, field: _Field, type_name: str, kind: _Kind, limits: Limits) -> Any:
    value = raw.get(field.name)
    if field.name not in raw or (value is None and field.default is None):
        if field.default is _REQUIRED:
            required = [f.name for f in kind.fields if f.default is _REQUIRED]
            raise _Invalid(MISSING_FIELD, f"{type_name} has no {field.name}: send {type_name} with "
                                          f"v, type, {', '.join(required)}")
        return field.default
    return field.check(value, f"{type_name} {field.name}", limits)
