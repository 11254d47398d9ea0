"""The offline extraction pool: `SampleExtractor` on Ray workers, one CPU each, fed from a queue.

Each worker has a sample in flight and one queued, so no worker waits for the driver; a sample is
written to the store as it completes; a file that cannot be decoded is reported and the others go
on; a worker that dies (e.g. killed for memory) is replaced.
"""

from __future__ import annotations

import os

# Keep every Ray port on 127.0.0.1, and authenticate as the project's other Ray processes do (Ray
# 2.60 otherwise writes a token that later processes may disagree with); read when ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from tqdm import tqdm  # noqa: E402

from grf_stream.data.store import FeatureStore  # noqa: E402
from grf_stream.features.offline import SampleExtractor, SampleJob  # noqa: E402

IN_FLIGHT_PER_WORKER = 2  # a queued job per worker, so no worker waits for the driver between samples


def extract_on_ray(todo: list[SampleJob], store: FeatureStore, modalities: list[str], workers: int,
                   address: str | None) -> list[tuple[str, str]]:
    """Extract `todo` on `workers` Ray workers (of a Ray of our own, or the cluster at `address`),
    writing each sample as it completes; (id, error) of the failures."""
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of our own; without it ray.init joins any cluster `ray start` left running here
        ray.init(address=address or "local", num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False)
    try:
        worker_class = ray.remote(num_cpus=1)(SampleExtractor)
        new_worker = lambda: worker_class.remote(modalities)  # noqa: E731
        pool = [new_worker() for _ in range(max(1, min(workers, len(todo))))]
        with tqdm(total=len(todo), unit="sample", desc="extracting", dynamic_ncols=True) as progress:
            return _dispatch(pool, new_worker, todo, store, progress)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(workers, new_worker, todo: list[SampleJob], store: FeatureStore, progress) -> list[tuple[str, str]]:
    queue, running, failed, replacements = list(reversed(todo)), {}, [], {}
    free = [worker for worker in workers for _ in range(IN_FLIGHT_PER_WORKER)]
    while queue or running:
        while queue and free:
            job, worker = queue.pop(), free.pop()
            running[worker.__call__.remote(job)] = (job, worker)
        done, _ = ray.wait(list(running), num_returns=1)
        job, worker = running.pop(done[0])
        try:
            store.write_features(job.id, ray.get(done[0]))
        except ray.exceptions.RayActorError as error:  # the worker died (e.g. killed for memory): replace it
            if worker not in replacements:  # its other job fails too: one replacement for both
                replacements[worker] = new_worker()
            worker = replacements[worker]
            failed.append((job.id, f"its worker died ({_reason(error)}); run again to retry"))
            progress.write(f"could not extract {job.id}: {failed[-1][1]}")
        except Exception as error:  # one bad file is reported, never stops the run
            failed.append((job.id, _reason(error)))
            progress.write(f"could not extract {job.id}: {failed[-1][1]}")
        free.append(worker)
        progress.update(1)
    return failed


def _reason(error: Exception) -> str:
    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the worker's exception
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
