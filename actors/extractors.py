"""Feature extraction on Ray: a pool of actors per modality over the plain extractor classes.

A session is pinned to one actor of each pool (by a hash of its id), because extractors keep
per-session streaming state (audio samples not yet framed, the face being tracked). Actors are
restarted by Ray when they die, and a call that was in flight is retried once; the session goes on
(losing at most the few audio samples that were not yet framed).
"""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import ray

from grf_stream.features import EXTRACTORS


def start_extractor_pools(modalities, per_modality: int = 1) -> dict[str, list]:
    pools = {}
    for modality in modalities:
        actor_class = ray.remote(EXTRACTORS[modality])
        pools[modality] = [actor_class.options(max_restarts=-1, max_task_retries=1, num_cpus=0.25).remote()
                           for _ in range(per_modality)]
    return pools


class RayExtractors:
    """The front-end's extraction backend over Ray actor pools."""

    def __init__(self, pools: dict[str, list]):
        self.pools = pools

    async def warm(self) -> None:
        """Wait until every actor is up and has run its networks once (see Extractor.warm)."""
        await asyncio.gather(*(actor.warm.remote() for pool in self.pools.values() for actor in pool))

    def _actor(self, modality: str, session: str):
        pool = self.pools[modality]
        return pool[zlib.crc32(session.encode()) % len(pool)]

    async def extract(self, modality: str, session: str, chunk) -> tuple[np.ndarray, np.ndarray]:
        return await self._actor(modality, session).extract.remote(chunk, session)

    async def flush(self, modality: str, session: str) -> tuple[np.ndarray, np.ndarray]:
        return await self._actor(modality, session).flush.remote(session)

    async def close(self, session: str) -> None:
        for modality in self.pools:
            await self._actor(modality, session).close.remote(session)
