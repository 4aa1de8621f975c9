"""``python -m worker.training.agent``: this machine's GPUs as extra ranks of the runs a Tuna
worker on another machine leads (TUNA_TRAINING_NODES > 1; docs/scaling.md).

The worker on the first machine claims a job, holds its lease, reports and checkpoints as rank
0, and opens each run's process group at ``--rendezvous`` (its TUNA_TRAINING_RENDEZVOUS). The
agent starts ``--processes`` local processes, ranks ``node_rank x processes`` and up; each joins
every run at that address, receives the run's config from rank 0, trains its share of each batch
and reports nothing, then waits for the next run. The config's paths (training file, base
model cache, output folder) must mean the same files here: the shared file system, mounted at
the same path.

Exits only when stopped (SIGTERM/SIGINT stops its processes too).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from datetime import timedelta
from types import FrameType

logger = logging.getLogger("tuna.agent")

# How long one look for an open run waits for the leading worker's store.
JOIN_WAIT = timedelta(seconds=10)


def serve_rank(
    rank: int, world_size: int, rendezvous: str, device_name: str, served: str | None = None
) -> None:
    """One rank, run after run, until killed; ``served``: a run not to join (the one a
    previous process of this rank died in, which rank 0 is about to close)."""
    from transformers.utils import logging as hf_logging

    from worker.training.distributed import RUN_KEY, rendezvous_store
    from worker.training.launch import join_run

    hf_logging.disable_progress_bar()
    address = f"tcp://{rendezvous}"
    while True:
        try:  # the id of the run the leading worker has open, if any
            store = rendezvous_store(address, leader=False, timeout=JOIN_WAIT)
            run_id = store.get(RUN_KEY).decode()
        except Exception:  # no run open (the worker's store is not up): look again shortly
            time.sleep(2)
            continue
        if not run_id or run_id == served:
            time.sleep(2)  # no run open, or the one this rank just served is still closing
            continue
        served = run_id
        logger.info("rank %d: joining run %s", rank, run_id)
        try:
            join_run(rank, world_size, address, device_name, run_id)
        except Exception:
            logger.warning("rank %d: the run ended with an error", rank, exc_info=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.training.agent", description=__doc__)
    parser.add_argument("--rendezvous", required=True, help="host:port of the leading worker")
    parser.add_argument("--nodes", type=int, required=True, help="machines in each run")
    parser.add_argument("--node-rank", type=int, required=True, help="this machine: 1 and up")
    parser.add_argument("--processes", type=int, default=1, help="ranks per machine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--served", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    world_size = args.nodes * args.processes
    if args.rank is not None:
        serve_rank(args.rank, world_size, args.rendezvous, args.device, args.served)
        return 0
    if not 1 <= args.node_rank < args.nodes:
        parser.error("--node-rank must be between 1 and --nodes - 1 (0 is the leading worker)")
    first = args.node_rank * args.processes
    base = [sys.executable, "-m", "worker.training.agent", *(argv or sys.argv[1:])]
    ranks = [
        subprocess.Popen([*base, "--rank", str(r)]) for r in range(first, first + args.processes)
    ]

    def stop(signum: int, _frame: FrameType | None) -> None:
        for process in ranks:
            process.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for index, process in enumerate(ranks):
            if process.poll() is not None:  # a rank that died: start it again for the next run
                logger.warning(
                    "rank %d exited (%s); restarting it", first + index, process.returncode
                )
                # Not back into the run it died in: rank 0 fails that attempt and closes it.
                stale = ["--served", _open_run(args.rendezvous) or ""]
                ranks[index] = subprocess.Popen([*base, "--rank", str(first + index), *stale])
        time.sleep(1)


def _open_run(rendezvous: str) -> str | None:
    """The id of the run the leading worker has open now, if it can be read."""
    from worker.training.distributed import RUN_KEY, rendezvous_store

    try:
        store = rendezvous_store(f"tcp://{rendezvous}", leader=False, timeout=JOIN_WAIT)
        return store.get(RUN_KEY).decode() or None
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
