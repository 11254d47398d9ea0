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

from actors.extraction_pool import extract_on_ray
from grf_stream.data.store import FeatureStore
from grf_stream.features import MODALITIES, feature_spec
from grf_stream.features.offline import MediaIndex, plan, read_labels


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
            failed = extract_on_ray(todo, store, args.modalities, args.workers, args.address)
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
