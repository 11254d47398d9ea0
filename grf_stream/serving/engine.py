"""The stateful fusion engine: every session's context, and fusion steps batched across sessions.

A plain class (no Ray): `actors/fusion.py` runs it as a Ray actor, tests drive it directly.

Each session has a `FusionState` (its context h, segment, step count, modalities fused so far); the
service keeps the context on its device between steps, and each result carries a host copy back.
`step()` takes the pending steps of many sessions at once and runs them in as few model calls as
possible: the first step of a segment through (1)-(3), later steps through (4)-(8), grouped by
modality (each has its own projection), padded in time with masks so that a batched step gives the
same numbers as the session alone. After every step comes a prediction (9).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from grf_stream.data.samples import pad
from grf_stream.model import GRF
from grf_stream.serving.graphs import BucketedFusion


class UnknownSession(KeyError):
    """A step for a session this service does not hold (never opened, or lost in a restart)."""


class ShardLost(RuntimeError):
    """A shard's service restarted and holds none of its sessions (said by a backend once it is back)."""


@dataclass
class FusionState:
    """One session's streaming state; the front-end keeps a copy of it (see SeededFusion)."""

    context: Any = None  # (d,) float32, None until the segment's first step: on the service's device
    # a tensor, in the front-end's copy a numpy array
    segment: int = 0
    step: int = 0  # steps fused in this segment
    modalities: list[str] = field(default_factory=list)  # the context holds these, in first-fused order
    rho: Any = None  # (10)'s read-out of the latest window of its modality (a 0-d tensor on the service's
    # device, a float in the front-end's copy); None before any, or for a model without a read-out

    @classmethod
    def after(cls, result: "StepResult") -> "FusionState":
        """The state a step left its session in, as its result tells it (the context as numpy)."""
        return cls(result.context, result.segment, result.step, list(result.modalities), result.rho)

    def snapshot(self) -> "FusionState":
        """A copy to restore after a failed call. Shallow is enough: a step replaces `context` with a
        new array, never writes into it, and only the list of modalities grows in place."""
        return dataclasses.replace(self, modalities=list(self.modalities))

    def reset(self, segment: int, carry_context: bool) -> None:
        """A new segment: the context starts afresh unless the session carries it over."""
        self.segment, self.step, self.modalities = segment, 0, []
        if not carry_context:  # the read-out goes with the context: a new segment has said nothing yet
            self.context, self.rho = None, None


@dataclass(frozen=True)
class StepRequest:
    """One (modality, feature window) pair to fuse into a session's context."""

    session: str
    seq: int
    modality: str
    features: np.ndarray  # (T, d) float32
    mask: np.ndarray  # (T,) bool


@dataclass(frozen=True)
class StepResult:
    session: str
    seq: int
    segment: int
    step: int
    modality: str
    modalities: tuple[str, ...]
    value: float  # the sentiment prediction after this step
    gate: float  # mean update gate z of the step (0 for a segment's first step)
    context: np.ndarray | None  # (d,) the new context, on the host: the front-end's copy for re-seeding;
    # None while the segment has heard nothing real (its first windows had no real row)
    rho: float | None = None  # (10)'s read-out after the step, for the same copy (None: the model has none)


class FusionService:
    """Per-session contexts over one GRF model, on CPU or GPU."""

    def __init__(self, model: GRF, device: str = "cpu", threads: int = 1, buckets: bool | None = None):
        """`buckets`: steps padded to shape buckets (graphs.py), replayed from CUDA graphs on a GPU
        (None: there, and nowhere else; True elsewhere: the padding alone, what a CPU test checks)."""
        if model.config.init == "sequence":
            raise ValueError("init: sequence is the released code's reproduction mode; a stream needs a "
                             "one-token context (init: pooled or learned)")
        self.threads = threads
        torch.set_num_threads(threads)  # a busy second core otherwise slows torch many times over
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.states: dict[str, FusionState] = {}
        on_gpu = self.device.type == "cuda"
        bucketed = on_gpu if buckets is None else buckets
        self.fuse = BucketedFusion(self._fuse, capture=on_gpu) if bucketed else self._fuse

    # -- session lifecycle -------------------------------------------------------------------

    def open(self, session: str, state: FusionState | None = None) -> None:
        """Start a session, or re-seed it from the front-end's copy after this service restarted."""
        if state is None:
            state = FusionState()
        else:  # a state of its own (the copy stays the front-end's), its context and read-out on the device
            context = None if state.context is None else torch.as_tensor(state.context, device=self.device)
            rho = None if state.rho is None else torch.tensor(state.rho, dtype=torch.float32, device=self.device)
            state = dataclasses.replace(state, context=context, modalities=list(state.modalities), rho=rho)
        self.states[session] = state

    def end_segment(self, session: str, carry_context: bool = False) -> int:
        state = self._state(session)
        state.reset(state.segment + 1, carry_context)
        return state.segment

    def close(self, session: str) -> None:
        self.states.pop(session, None)

    def sessions(self) -> list[str]:
        return list(self.states)

    def warm(self) -> None:
        """Run a first and a later step of every modality once, on a private session, so that the
        first session's first step does not pay for the model's first run."""
        session = "__warm__"
        for modality, size in self.model.config.modalities.items():
            row = StepRequest(session, 0, modality, np.zeros((1, size), np.float32), np.ones(1, bool))
            self.open(session)
            try:
                self.step([row, row])  # the segment's first step, then a later one
            finally:
                self.close(session)

    # -- fusion ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, requests: list[StepRequest]) -> list[StepResult]:
        """Fuse every request; results in the order of the requests.

        Requests of one session are applied in order (a later one sees the earlier one's context).
        If any fails, no session's state changes and the error is raised.
        """
        results: dict[int, StepResult] = {}
        before = {r.session: self._state(r.session).snapshot() for r in requests}  # unknown sessions fail here
        try:
            for wave in self._waves(requests):
                for group in self._groups(wave, requests):
                    for index, result in zip(group, self._run_group([requests[i] for i in group])):
                        results[index] = result
        except Exception:
            self.states.update(before)  # all or nothing: no session is left a step ahead of its copies
            raise
        return [results[i] for i in range(len(requests))]

    def _waves(self, requests: list[StepRequest]) -> list[list[int]]:
        """Split into rounds with at most one request per session, keeping each session's order."""
        waves: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, request in enumerate(requests):
            self._state(request.session)  # an unknown session fails before any work is done
            wave = seen.get(request.session, -1) + 1
            seen[request.session] = wave
            if wave == len(waves):
                waves.append([])
            waves[wave].append(i)
        return waves

    def _groups(self, wave: list[int], requests: list[StepRequest]) -> list[list[int]]:
        """One model call per (first step or not, modality, length class) within a wave: a step of
        thousands of rows is not padded into the calls of the short steps beside it."""
        groups: dict[tuple[bool, str, int], list[int]] = {}
        for i in wave:
            request = requests[i]
            first = self.states[request.session].context is None
            groups.setdefault((first, request.modality, length_class(len(request.mask))), []).append(i)
        return list(groups.values())

    def _run_group(self, group: list[StepRequest]) -> list[StepResult]:
        x, mask = self._pad(group)  # (B, T, d), (B, T)
        states = [self.states[r.session] for r in group]
        first = states[0].context is None
        previous = None if first else torch.stack([s.context for s in states])  # already on the device
        context, gate, rho, values = self.fuse(first, group[0].modality, previous, x, mask, self._rhos(states))
        values = values.cpu().numpy()
        copies = context.cpu().numpy()  # one transfer for the whole group: the front-end's copies
        gates = gate.mean(dim=-1).cpu().numpy()
        rhos = (rho, rho.cpu().numpy()) if rho is not None else ([None] * len(group),) * 2
        return [self._advance(r, s, context[i], copies[i], values[i], gates[i], rhos[0][i], rhos[1][i])
                for i, (r, s) in enumerate(zip(group, states))]

    def _fuse(self, first: bool, modality: str, previous: torch.Tensor | None, x: torch.Tensor, mask: torch.Tensor,
              rho: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """One group's step on the device, with no host synchronisation (graphs.py may capture it):
        (contexts, gates, read-outs or None, predictions)."""
        if first:
            context = self.model.init_context(x, mask, modality)  # (1)-(3)
            gate = torch.zeros_like(context)
        else:
            context, gate = self.model.fuse_step(previous, x, mask, modality)  # (4)-(8)
        rho = self.model.read_out(rho, x, mask, modality)  # (10), None without a read-out
        return context, gate, rho, self.model.predict(context, rho=rho)  # (9)

    def _rhos(self, states: list[FusionState]) -> torch.Tensor | None:
        """(B,) each session's read-out of (10) before this step; None for a model without one."""
        if self.model.readout is None:
            return None
        first = self.model.readout.first(1)[0]
        return torch.stack([s.rho if s.rho is not None else first for s in states])

    def _advance(self, request: StepRequest, state: FusionState, context: torch.Tensor, copy: np.ndarray,
                 value, gate, rho: torch.Tensor | None, rho_copy) -> StepResult:
        heard = state.context is not None or bool(request.mask.any())
        if heard:  # a first window with no real row (no face) starts nothing: the next real one starts the context
            state.context = context
            if request.modality not in state.modalities:
                state.modalities.append(request.modality)
        state.step += 1
        state.rho = rho
        return StepResult(request.session, request.seq, state.segment, state.step, request.modality,
                          tuple(state.modalities), float(value), float(gate), copy if heard else None,
                          None if rho_copy is None else float(rho_copy))

    def _pad(self, group: list[StepRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = pad([r.features for r in group], [r.mask for r in group])  # (B, T, d), (B, T)
        return x.to(self.device), mask.to(self.device)

    def _state(self, session: str) -> FusionState:
        if session not in self.states:
            raise UnknownSession(f"session {session!r} is not open on this fusion service")
        return self.states[session]


def length_class(rows: int) -> int:
    """Steps of up to 128 rows share a class; above, each class spans a factor of 4 (at most 4x padding)."""
    return max(0, (max(rows, 1) - 1).bit_length() - 7 + 1) // 2


class LocalFusion:
    """The front-end's fusion backend in this process: one FusionService per shard, called directly.

    What tests and a single-process server use; `actors.fusion.RayFusion` is the same over Ray actors.
    """

    def __init__(self, services: list[FusionService]):
        self.services = services
        self.shards = len(services)

    async def open(self, shard: int, session: str, state: FusionState | None) -> None:
        self.services[shard].open(session, state)

    async def step(self, shard: int, requests: list[StepRequest]) -> list[StepResult]:
        return self.services[shard].step(requests)

    async def end_segment(self, shard: int, session: str, carry_context: bool) -> None:
        self.services[shard].end_segment(session, carry_context)

    async def close(self, shard: int, session: str) -> None:
        self.services[shard].close(session)


class FusionBackend(Protocol):
    """Where fusion runs: `shards` independent services, a session always on the same one."""

    shards: int

    async def open(self, shard: int, session: str, state: FusionState | None) -> None: ...
    async def step(self, shard: int, requests: list[StepRequest]) -> list[StepResult]: ...
    async def end_segment(self, shard: int, session: str, carry_context: bool) -> None: ...
    async def close(self, shard: int, session: str) -> None: ...


class SeededFusion:
    """A fusion backend, with a copy of every session's state to seed a shard again that lost them.

    Every result brings its session's new context back, so a copy is the service's state after the
    last answered call. When a shard says it lost its sessions (ShardLost once its restarted actor
    is up, or UnknownSession from a service that restarted empty), each of its sessions is opened
    again from its copy and the call is retried once: no session loses its place.
    """

    def __init__(self, backend: FusionBackend):
        self.backend, self.shards = backend, backend.shards
        self.copies: list[dict[str, FusionState]] = [{} for _ in range(backend.shards)]
        # One call at a time per shard (a service runs them one at a time anyway): a re-seed must not
        # interleave with another call, or a session could be seeded from a copy its step just left behind.
        self.turns = [asyncio.Lock() for _ in range(backend.shards)]

    async def open(self, shard: int, session: str, state: FusionState | None = None) -> None:
        await self._call(shard, "open", session, state)
        self.copies[shard][session] = state if state is not None else FusionState()

    async def step(self, shard: int, requests: list[StepRequest]) -> list[StepResult]:
        results = await self._call(shard, "step", requests)
        for result in results:
            if result.session in self.copies[shard]:  # else closed while its step was in flight
                self.copies[shard][result.session] = FusionState.after(result)
        return results

    async def end_segment(self, shard: int, session: str, carry_context: bool) -> None:
        await self._call(shard, "end_segment", session, carry_context)
        copy = self.copies[shard][session]
        copy.reset(copy.segment + 1, carry_context)

    async def close(self, shard: int, session: str) -> None:
        self.copies[shard].pop(session, None)  # first: a re-seed during the close must not bring it back
        await self._call(shard, "close", session)

    def copy(self, shard: int, session: str) -> FusionState | None:
        return self.copies[shard].get(session)

    async def _call(self, shard: int, method: str, *args):
        async with self.turns[shard]:
            try:
                return await getattr(self.backend, method)(shard, *args)
            except (ShardLost, UnknownSession):
                await self._reseed(shard)
                return await getattr(self.backend, method)(shard, *args)

    async def _reseed(self, shard: int) -> None:
        for session, state in list(self.copies[shard].items()):
            await self.backend.open(shard, session, state)
