"""``python -m worker.training --config cfg.json``: one run, JSON lines on stdout.

Exit status: 0 done, 1 training error (the last line says why), 3 paused, 4 cancelled.  The last
line is ``{"type": "result", ...}`` or ``{"type": "error", ...}``.

On several processes: ``--processes N`` starts N ranks on this machine (`launch.train_on`);
``--rank R --world-size N --init-method tcp://HOST:PORT`` is one rank of such a run (how
`launch` starts its children: they take the config from rank 0, `launch.join_run`); under
``torchrun`` (its RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT: one or several machines) each
process is one rank. Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.training.callbacks import NullCallbacks, PrintCallbacks
from worker.training.config import TrainingConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.training", description=__doc__)
    parser.add_argument("--config", type=Path, help="TrainingConfig as JSON (not with --rank)")
    parser.add_argument("--processes", type=int, default=1, help="ranks to start on this machine")
    parser.add_argument("--rank", type=int, default=None, help="this process's rank")
    parser.add_argument("--world-size", type=int, default=None)
    parser.add_argument("--init-method", default=None, help="tcp://HOST:PORT of rank 0")
    parser.add_argument("--run-id", default=None, help="the run's id at a shared rendezvous")
    parser.add_argument("--device", default="auto", help="with --rank: this rank's device")
    args = parser.parse_args(argv)
    if args.rank is not None:  # one of launch.train_on's ranks: the config comes from rank 0
        from worker.training.launch import join_run

        join_run(args.rank, args.world_size, args.init_method, args.device, args.run_id)
        return 0
    if args.config is None:
        parser.error("--config is required")
    config = TrainingConfig.from_dict(json.loads(args.config.read_text()))

    from transformers.utils import logging as hf_logging

    from tuna_core.devices import pick_device
    from worker.training.distributed import (
        destroy_process_group,
        from_torchrun_environment,
        init_process_group,
    )
    from worker.training.launch import train_on
    from worker.training.loop import TrainingCancelled, TrainingError, TrainingPaused

    # stdout carries only JSON lines; keep stderr to warnings and errors.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    joined = from_torchrun_environment()
    if joined is not None:
        rank, world_size, address = joined
        init_process_group(rank, world_size, address, pick_device(config.device))
    rank = joined[0] if joined is not None else 0
    callbacks = PrintCallbacks(sys.stdout) if rank == 0 else NullCallbacks()

    def emit(kind: str, **payload: object) -> None:
        if rank == 0:
            print(json.dumps({"type": kind, **payload}, default=str), flush=True)

    try:
        result = train_on(args.processes if joined is None else 1, config, callbacks)
    except TrainingPaused as exc:
        emit("paused", step=exc.step, checkpoint=str(exc.checkpoint_path))
        return 3
    except TrainingCancelled as exc:
        emit("cancelled", step=exc.step)
        return 4
    except TrainingError as exc:
        emit("error", code=exc.code, param=exc.param, message=str(exc))
        return 1
    finally:
        if joined is not None:
            destroy_process_group()
    if rank != 0:
        return 0
    emit(
        "result",
        final_dir=str(result.final_dir),
        trained_tokens=result.trained_tokens,
        total_steps=result.total_steps,
        metrics=result.metrics,
        hyperparameters=result.hyperparameters.to_dict(),
        checkpoints=[{"step": c.step, "path": str(c.path)} for c in result.checkpoints],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
