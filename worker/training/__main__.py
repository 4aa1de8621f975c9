"""``python -m worker.training --config cfg.json``: one run, JSON lines on stdout.

Exit status: 0 done, 1 training error (the last line says why), 3 paused, 4 cancelled.  The last
line is ``{"type": "result", ...}`` or ``{"type": "error", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.training.callbacks import PrintCallbacks
from worker.training.config import TrainingConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.training", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TrainingConfig as JSON")
    args = parser.parse_args(argv)
    config = TrainingConfig.from_dict(json.loads(args.config.read_text()))

    from transformers.utils import logging as hf_logging

    from worker.training.loop import TrainingCancelled, TrainingError, TrainingPaused, train

    # stdout carries only JSON lines; keep stderr to warnings and errors.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    callbacks = PrintCallbacks(sys.stdout)

    def emit(kind: str, **payload: object) -> None:
        print(json.dumps({"type": kind, **payload}, default=str), flush=True)

    try:
        result = train(config, callbacks)
    except TrainingPaused as exc:
        emit("paused", step=exc.step, checkpoint=str(exc.checkpoint_path))
        return 3
    except TrainingCancelled as exc:
        emit("cancelled", step=exc.step)
        return 4
    except TrainingError as exc:
        emit("error", code=exc.code, param=exc.param, message=str(exc))
        return 1
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
