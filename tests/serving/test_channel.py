"""The fusion data plane (grf_stream/serving/channel.py) on real ZeroMQ sockets, without Ray."""

import asyncio

import numpy as np
import pytest
import torch
import zmq

from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import channel as c
from grf_stream.serving.engine import FusionService, FusionState, StepRequest, UnknownSession

SIZES = {"text": 12, "audio": 5}


@pytest.fixture
def service():
    torch.manual_seed(0)
    return FusionService(GRF(GRFConfig(modalities=SIZES, d_model=32, num_layers=1, num_heads=2, d_ffn=64)).eval())


@pytest.fixture
def server(service):
    running = c.ChannelServer(service)
    yield running
    running.stop()


def requests(rng, sessions, modality, seq):
    return [StepRequest(s, seq, modality, rng.standard_normal((3, SIZES[modality])).astype(np.float32),
                        np.array([True, True, False])) for s in sessions]


def over_the_channel(address, calls):
    """Each (method, args) through one Channel, in order; the results (or the exceptions raised)."""
    async def run():
        channel = c.Channel(address, zmq.asyncio.Context.instance())

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
    state = FusionState(rng.standard_normal(32).astype(np.float32), 2, 5, ["audio", "text"])
    step = requests(rng, ["a", "b"], "audio", 7)
    for method, args in [("open", ("a", state)), ("open", ("a", None)), ("step", (step,)),
                         ("end_segment", ("a", True)), ("close", ("a",))]:
        call_id, decoded_method, decoded = c.decode_call(c.encode_call(3, method, args))
        assert (call_id, decoded_method) == (3, method)
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
    assert [(r.session, r.seq, r.step, r.modalities) for r in served] == \
           [(r.session, r.seq, r.step, r.modalities) for r in expected]
    np.testing.assert_array_equal(served[-1].context, expected[-1].context)


def test_a_failing_call_raises_at_the_caller_and_leaves_the_service_as_it_was(server):
    rng = np.random.default_rng(2)
    bad = StepRequest("a", 2, "text", rng.standard_normal((3, 99)).astype(np.float32), np.ones(3, bool))  # wrong d
    got = over_the_channel(server.address, [("open", ("a", None)), ("step", (requests(rng, ["a"], "text", 1),)),
                                            ("step", ([bad],)), ("step", (requests(rng, ["nobody"], "text", 1),))])
    assert isinstance(got[2], c.ChannelFailure) and "expected (B, T, 12)" in str(got[2])
    assert isinstance(got[3], UnknownSession)  # what makes the backend re-seed a restarted actor
    assert server.service.states["a"].step == 1  # the failed step moved nothing


def test_bytes_that_are_not_a_call_are_answered_not_left_waiting(server):
    with zmq.Context() as context, context.socket(zmq.DEALER) as sock:
        sock.linger = 0
        sock.connect(server.address)
        sock.send(b"\x93\x01\xa4nope\x90")  # msgpack, but no such call
        assert sock.poll(5000)
        call_id, outcome = c.decode_reply(sock.recv())
    assert isinstance(outcome, c.ChannelFailure) and "not a data-plane call" in str(outcome)


def test_a_service_that_is_gone_is_noticed_by_asking_whether_it_is_still_there(monkeypatch, service):
    monkeypatch.setattr(c, "LIVENESS_S", 0.1)
    server = c.ChannelServer(service)
    server.stop()  # gone: nothing answers at its address

    async def run():
        channel = c.Channel(server.address, zmq.asyncio.Context.instance())
        asked = []

        async def still_there():
            asked.append(True)
            return len(asked) < 3  # the control plane says so on the third question

        try:
            await channel.call("close", ("a",), still_there)
        finally:
            channel.close()
        return asked

    with pytest.raises(c.ChannelLost):
        asyncio.run(run())


def test_arrays_of_other_dtypes_are_refused():
    call = c.encode_call(1, "step", ([StepRequest("a", 1, "text", np.zeros((1, 12), np.float32), np.ones(1, bool))],))
    tampered = call.replace(b"<f4", b"|O8")
    with pytest.raises(ValueError, match="dtype"):
        c.decode_call(tampered)
