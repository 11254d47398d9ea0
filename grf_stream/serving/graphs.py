"""CUDA graphs for the fusion service: a step's kernels replayed from a graph captured per shape bucket.

On a GPU one fusion step of the served model is a few hundred small kernels, and launching them one
by one from Python takes longer than running them (BENCHMARKS.md: 7.45 ms a step at one session on
an H200, against about 1.3 ms on this project's 2-core CPU). A CUDA graph launches them all at once.

A graph replays fixed shapes, so a call is padded up to its bucket: the sessions and the rows of
the window each to the next power of two, every padding row masked out and every padding session
given a window with no real row. Neither changes a real session's numbers: the model never lets a
masked row reach an output, and sessions are independent within a batch. A bucket's graph is
captured the first time the bucket is met (the server's warm-up meets the smallest ones); a call
too large for a bucket (MAX_WINDOW_VALUES), or one whose capture failed, runs eagerly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

# A bucket whose padded window would hold more values (128 MB of float32) runs eagerly: at that size
# the launches are a small part of the step, and every bucket keeps its buffers for good.
MAX_WINDOW_VALUES = 1 << 25

# (first step of a segment, modality, previous contexts (B, d) or None, window (B, T, d_m), mask (B, T),
# read-out before (B,) or None) -> (context, gate, read-out after or None, prediction)
Fuse = Callable[[bool, str, Tensor | None, Tensor, Tensor, Tensor | None], tuple[Tensor | None, ...]]


def bucket(n: int) -> int:
    """The next power of two at or above n."""
    return 1 << max(n - 1, 0).bit_length()


@dataclass
class Bucket:
    """One shape's static inputs and, once captured, the graph that reads them and its outputs."""

    inputs: tuple[Tensor | None, ...]  # previous, x, mask, rho at the bucket's shape
    graph: torch.cuda.CUDAGraph | None = None
    outputs: tuple[Tensor | None, ...] = ()


class BucketedFusion:
    """`fuse` run on inputs padded to their bucket: replayed from a CUDA graph per bucket with
    `capture`, else run as it is on the padded inputs (what a CPU test can check)."""

    def __init__(self, fuse: Fuse, capture: bool):
        self.fuse, self.capture = fuse, capture
        self.buckets: dict[tuple, Bucket] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None  # one memory pool for every graph

    def __call__(self, first: bool, modality: str, previous: Tensor | None, x: Tensor, mask: Tensor,
                 rho: Tensor | None) -> tuple[Tensor | None, ...]:
        sessions, rows = mask.shape
        if bucket(sessions) * bucket(rows) * x.shape[2] > MAX_WINDOW_VALUES:
            return self.fuse(first, modality, previous, x, mask, rho)
        key = (first, modality, bucket(sessions), bucket(rows), rho is not None)  # a first step has no previous
        entry = self.buckets.get(key) or self._new_bucket(key, previous, x, mask, rho)
        load(entry.inputs, (previous, x, mask, rho))
        if entry.graph is None:
            return tuple(None if o is None else o[:sessions] for o in self.fuse(first, modality, *entry.inputs))
        entry.graph.replay()
        # Copies: the next replay writes over the graph's outputs, and a session keeps its context.
        return tuple(None if o is None else o[:sessions].clone() for o in entry.outputs)

    def _new_bucket(self, key: tuple, previous: Tensor | None, x: Tensor, mask: Tensor, rho: Tensor | None) -> Bucket:
        first, modality, sessions, rows = key[:4]
        entry = self.buckets[key] = Bucket((
            None if previous is None else previous.new_zeros(sessions, previous.shape[1]),
            x.new_zeros(sessions, rows, x.shape[2]),
            mask.new_zeros(sessions, rows),
            None if rho is None else rho.new_zeros(sessions)))
        if self.capture:
            load(entry.inputs, (previous, x, mask, rho))
            try:
                entry.graph, entry.outputs = self._capture(first, modality, entry.inputs)
            except RuntimeError as error:  # e.g. an operation that syncs with the host: this bucket runs eagerly
                print(f"grf-stream: no CUDA graph for {key} ({error}); that shape runs eagerly", file=sys.stderr,
                      flush=True)
        return entry

    def _capture(self, first: bool, modality: str, inputs: tuple[Tensor | None, ...]):
        side = torch.cuda.Stream()  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation (cuBLAS handles, workspaces) must not be captured
                self.fuse(first, modality, *inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a Ray call on another thread of the actor is no reason to abandon the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = self.fuse(first, modality, *inputs)
        return graph, outputs


def load(buffers: tuple[Tensor | None, ...], values: tuple[Tensor | None, ...]) -> None:
    """Each value into the front corner of its buffer, the rest zero: padding rows and sessions masked out."""
    for buffer, value in zip(buffers, values):
        if buffer is None:
            continue
        buffer.zero_()
        buffer[tuple(slice(0, n) for n in value.shape)].copy_(value)
