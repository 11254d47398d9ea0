"""The fusion data plane (grf_stream/serving/channel.py) on real TCP connections, without Ray."""

import asyncio
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import channel as c
from grf_stream.serving.engine import FusionService, FusionState, StepRequest, UnknownSession

SIZES = {"text": 12, "audio": 5}


@pytest.fixture
def service():
    """A model with the read-out of (10): its results and states carry a rho over the wire too."""
    torch.manual_seed(0)
    config = GRFConfig(modalities=SIZES, d_model=32, num_layers=1, num_heads=2, d_ffn=64, readout="text")
    return FusionService(GRF(config).eval())


@pytest.fixture
def server(service):
    running = c.ChannelServer(service)
    yield running
    running.stop()


def requests(rng, sessions, modality, seq):
    return [StepRequest(s, seq, modality, rng.standard_normal((3, SIZES[modality])).astype(np.float32),
                        np.array([True, True, False])) for s in sessions]


def control_plane_that_says_gone_on_the_third_question():
    """(the questions asked so far, the `still_there` a Channel asks)."""
    asked = []

    async def still_there():
        asked.append(True)
        return len(asked) < 3

    return asked, still_there


def over_the_channel(address, calls):
    """Each (method, args) through one Channel, in order; the results (or the exceptions raised)."""
    async def run():
        channel = await c.Channel.connect(address)

        async def still_there():
            return True

        out = []
        for method, args in calls:
            try:
                out.append(await channel.call(method, args, still_there))
            except Exception as error:
                out.append(error)
        channel.close()
        return out

    return asyncio.run(run())


def test_calls_and_replies_survive_the_wire_exactly():
    rng = np.random.default_rng(0)
    state = FusionState(rng.standard_normal(32).astype(np.float32), 2, 5, ["audio", "text"], float(np.float32(0.3)))
    step = requests(rng, ["a", "b"], "audio", 7)
    for method, args in [("open", ("a", state)), ("open", ("a", None)), ("step", (step,)),
                         ("end_segment", ("a", True)), ("close", ("a",))]:
        call_id, service, decoded_method, decoded = c.decode_call(c.encode_call(3, method, args, "f00d"))
        assert (call_id, service, decoded_method) == (3, "f00d", method)
        for got, sent in zip(decoded, args):
            assert repr(got) == repr(sent)  # arrays included (their repr shows every value here)


def test_steps_over_the_channel_equal_the_service_called_directly(server):
    rng = np.random.default_rng(1)
    first, later = requests(rng, ["a", "b"], "text", 1), requests(rng, ["a", "b"], "audio", 2)
    direct = FusionService(server.service.model)
    for s in ("a", "b"):
        direct.open(s)
    expected = direct.step(first) + direct.step(later)
    got = over_the_channel(server.address, [("open", ("a", None)), ("open", ("b", None)),
                                            ("step", (first,)), ("step", (later,))])
    served = got[2] + got[3]
    assert [r.value for r in served] == [r.value for r in expected]  # bit for bit: torch on one thread there too
    assert [(r.session, r.seq, r.step, r.modalities, r.rho) for r in served] == \
           [(r.session, r.seq, r.step, r.modalities, r.rho) for r in expected]
    assert served[-1].rho is not None
    np.testing.assert_array_equal(served[-1].context, expected[-1].context)


def test_a_failing_call_raises_at_the_caller_and_leaves_the_service_as_it_was(server):
    rng = np.random.default_rng(2)
    bad = StepRequest("a", 2, "text", rng.standard_normal((3, 99)).astype(np.float32), np.ones(3, bool))  # wrong d
    got = over_the_channel(server.address, [("open", ("a", None)), ("step", (requests(rng, ["a"], "text", 1),)),
                                            ("step", ([bad],)), ("step", (requests(rng, ["nobody"], "text", 1),))])
    assert isinstance(got[2], c.ChannelFailure) and "expected (B, T, 12)" in str(got[2])
    assert isinstance(got[3], UnknownSession)  # what makes the backend re-seed a restarted actor
    assert server.service.states["a"].step == 1  # the failed step moved nothing


def test_bytes_that_are_not_a_call_are_answered_not_left_waiting_and_a_stray_peer_loses_only_its_connection(server):
    host, port, _ = c.parse_address(server.address)
    with socket.create_connection((host, port), timeout=5) as stray:
        stray.sendall(c.frame(b"\x94\x01\xa0\xa4nope\x90"))  # msgpack, but no such call
        buffer = bytearray()
        while not (frames := c.take_frames(buffer)):
            buffer += stray.recv(1 << 16)
        call_id, outcome = c.decode_reply(frames[0])
        assert isinstance(outcome, c.ChannelFailure) and "not a data-plane call" in str(outcome)
        stray.sendall(b"\xff" * 8)  # a length over any call's: the connection is closed
        assert stray.recv(1) == b""
    assert over_the_channel(server.address, [("open", ("a", None))]) == [None]  # the service goes on


def test_frames_split_anywhere_are_put_back_together():
    payloads = [b"", b"x" * 5, bytes(range(256)) * 300]
    wire = b"".join(c.frame(p) for p in payloads)
    buffer, got = bytearray(), []
    for i in range(0, len(wire), 7):
        buffer += wire[i:i + 7]
        got += c.take_frames(buffer)
    assert got == payloads and buffer == bytearray()


def test_a_service_cut_off_without_closing_is_noticed_by_asking_whether_it_is_still_there(monkeypatch):
    """A node cut off from the network closes nothing: a listener that accepts and never answers stands
    in for it, and the channel asks the control plane until it says the service is gone."""
    monkeypatch.setattr(c, "LIVENESS_S", 0.1)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel completes the connection; nobody reads
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}#0123456789abcdef"

        async def run():
            channel = await c.Channel.connect(address)
            _, still_there = control_plane_that_says_gone_on_the_third_question()
            try:
                await channel.call("close", ("a",), still_there)
            finally:
                channel.close()

        with pytest.raises(c.ChannelLost, match="is gone"):
            asyncio.run(run())


def test_nothing_listening_is_a_lost_channel_at_once(service):
    server = c.ChannelServer(service)
    server.stop()

    async def run():
        await c.Channel.connect(server.address)

    with pytest.raises(c.ChannelLost, match="does not answer"):
        asyncio.run(run())


SERVICE_IN_A_PROCESS = f"""
import time, torch
from grf_stream.model import GRF, GRFConfig
from grf_stream.serving.channel import ChannelServer
from grf_stream.serving.engine import FusionService
service = FusionService(GRF(GRFConfig(modalities={SIZES}, d_model=32, num_layers=1, num_heads=2, d_ffn=64)).eval())
step = service.step
service.step = lambda requests: (time.sleep(0.5), step(requests))[1]  # still running when it is killed
print(ChannelServer(service).address, flush=True)
time.sleep(120)
"""


def test_a_service_whose_process_dies_fails_every_call_at_once(monkeypatch):
    """A killed service's process closes its connection: the call in flight and every later one fail
    with ChannelLost within milliseconds, without a liveness period or a question to the control plane."""
    monkeypatch.setattr(c, "LIVENESS_S", 0.2)
    process = subprocess.Popen([sys.executable, "-c", SERVICE_IN_A_PROCESS], stdout=subprocess.PIPE, text=True)
    address = process.stdout.readline().strip()

    async def run():
        channel = await c.Channel.connect(address)
        asked, still_there = control_plane_that_says_gone_on_the_third_question()  # it learns of the death later
        await channel.call("open", ("a", None), still_there)
        step = requests(np.random.default_rng(0), ["a"], "text", 0)
        in_flight = asyncio.ensure_future(channel.call("step", (step,), still_there))
        await asyncio.sleep(0.1)
        process.kill()
        killed = time.monotonic()
        outcomes = await asyncio.gather(in_flight, channel.call("close", ("a",), still_there), return_exceptions=True)
        waited = time.monotonic() - killed
        channel.close()
        return outcomes, asked, waited

    try:
        outcomes, asked, waited = asyncio.run(run())
    finally:
        process.kill()
        process.wait()
    assert all(isinstance(o, c.ChannelLost) and "closed its connection" in str(o) for o in outcomes), outcomes
    assert asked == [] and waited < c.LIVENESS_S


def test_a_call_for_another_incarnation_at_the_same_address_is_refused_not_run(server):
    """A restarted service may get its predecessor's port: a call meant for the predecessor reaches it,
    is refused (ChannelLost) and leaves its state alone."""
    endpoint, _, _ = server.address.partition("#")
    [outcome] = over_the_channel(f"{endpoint}#0123456789abcdef", [("open", ("a", None))])
    assert isinstance(outcome, c.ChannelLost) and "is gone" in str(outcome)
    assert server.service.sessions() == []
    assert over_the_channel(server.address, [("open", ("a", None))]) == [None]
    assert server.service.sessions() == ["a"]


def test_arrays_of_other_dtypes_are_refused():
    step = StepRequest("a", 1, "text", np.zeros((1, 12), np.float32), np.ones(1, bool))
    call = c.encode_call(1, "step", ([step],), "f00d")
    tampered = call.replace(b"<f4", b"|O8")
    with pytest.raises(ValueError, match="dtype"):
        c.decode_call(tampered)
