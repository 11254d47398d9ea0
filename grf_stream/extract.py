"""Extract features from recorded videos into a feature store, with the extractors the server runs.

    python -m grf_stream.extract --labels label.csv --media Raw/ --out stores/mosi
    python -m grf_stream.extract --labels mosi.csv --out stores/mosi_text --modalities text

Reads a label CSV (MMSA's label.csv or the CMU-MOSI CSV; see grf_stream/features/offline.py for
the columns and how each sample's media file is found), extracts every sample on a pool of Ray
workers with a progress bar, and writes grf_stream/data/store.py's layout. Finished samples are
written one file each as they complete, so an interrupted run resumes where it stopped when run
again; files that cannot be decoded are reported at the end and do not stop the others.
Exit status: 0 when every sample is in the store, 1 when some could not be extracted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from grf_stream.data.store import FeatureStore
from grf_stream.features import MODALITIES, feature_spec
from grf_stream.features.offline import MediaIndex, SampleExtractor, SampleJob, plan, read_labels

IN_FLIGHT_PER_WORKER = 2  # a queued job per worker, so no worker waits for the driver between samples


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.media and set(args.modalities) - {"text"}:
        parser.error("--media FOLDER is needed for audio and video features (or extract text alone: --modalities text)")
    try:
        rows = read_labels(args.labels)[: args.limit]
        store = FeatureStore.create(args.out, feature_spec(args.modalities))
    except (OSError, ValueError) as error:  # a missing or malformed CSV, a store of another spec
        parser.error(str(error))
    jobs, skipped = plan(rows, MediaIndex(args.media), args.modalities)
    todo = [job for job in jobs if not store.has(job.id)]
    print(f"{len(rows)} samples in {args.labels}: {len(jobs) - len(todo)} already in {args.out}, {len(todo)} to extract, "
          f"{len(skipped)} skipped for lack of input", file=sys.stderr)
    failed: list[tuple[str, str]] = []
    try:
        if todo:
            failed = _run_on_ray(todo, store, args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished samples are in {args.out}; run the same command again to resume", file=sys.stderr)
        return 130
    finished = {job.id for job in jobs if store.has(job.id)}
    store.write_index([row.index_row() for row in rows if row.id in finished])
    _report(len(finished), skipped, failed, args.out)
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grf_stream.extract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, help="label CSV: MMSA label.csv (video_id, clip_id, text, label, mode) or the CMU-MOSI CSV")
    parser.add_argument("--media", help="folder of videos (mp4, avi, webm, ...) and/or audio files (wav, flac, ...); searched recursively")
    parser.add_argument("--out", required=True, help="feature store folder to write (or resume)")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES, help="default: all")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel Ray workers, one CPU each (default: every core)")
    parser.add_argument("--limit", type=int, help="only the first N rows of the CSV")
    parser.add_argument("--address", help="a running Ray cluster to use instead of starting one here (set RAY_AUTH_MODE to match it)")
    return parser


def _run_on_ray(todo: list[SampleJob], store: FeatureStore, args) -> list[tuple[str, str]]:
    """Extract `todo` on Ray workers, writing each sample as it completes; (id, error) of failures."""
    # Keep every Ray port on 127.0.0.1, and authenticate as the project's other Ray processes do
    # (Ray 2.60 otherwise writes a token that later processes may disagree with).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of our own; without it ray.init joins any cluster `ray start` left running here
        ray.init(address=args.address or "local", num_cpus=None if args.address else args.workers, include_dashboard=False, log_to_driver=False)
    try:
        worker_class = ray.remote(num_cpus=1)(SampleExtractor)
        new_worker = lambda: worker_class.remote(args.modalities)  # noqa: E731
        workers = [new_worker() for _ in range(max(1, min(args.workers, len(todo))))]
        with tqdm(total=len(todo), unit="sample", desc="extracting", dynamic_ncols=True) as progress:
            return _dispatch(ray, workers, new_worker, todo, store, progress)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(ray, workers, new_worker, todo: list[SampleJob], store: FeatureStore, progress) -> list[tuple[str, str]]:
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


def _report(finished: int, skipped: list[tuple[str, str]], failed: list[tuple[str, str]], out: str) -> None:
    print(f"{finished} samples in {out}", file=sys.stderr)
    if skipped:
        shown = "".join(f"\n  {sample}: {why}" for sample, why in skipped[:5])
        print(f"{len(skipped)} skipped for lack of input{shown}" + ("\n  ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if failed:
        listed = "".join(f"\n  {sample}: {why}" for sample, why in failed)
        print(f"{len(failed)} could not be extracted (fix or remove them, then run again to add them):{listed}", file=sys.stderr)


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    sys.exit(status)
