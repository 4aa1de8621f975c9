"""Training on several processes: the engine on N processes against the same run on one.

The same model, data, seed and global batch are trained twice by ``worker.training``: once by
``train()`` in this process (the baseline), once by ``launch.train_on(N, ...)`` (rank 0 here,
the others as child processes: DDP for LoRA, FSDP2 for full fine-tuning). Steps after
``--warmup-steps`` are timed from one ``on_metrics`` to the next; throughput counts real tokens.

Printed: tokens/s of each, the speedup, the scaling efficiency (speedup / N), and the largest
loss difference between the two runs (they compute the same gradients: it must stay within float
rounding, else the speedup is not counted). On this 2-core CPU two gloo processes share the
cores, so the speedup is below 1 here; the figure that matters is on a GPU machine:

    python bench/train_scaling.py --processes 8 --model smollm2-135m --device cuda
    python bench/train_scaling.py --processes 8 --device cuda --training-type full \\
        --base my-1b --local-models '{"my-1b": "/models/Llama-3.2-1B-Instruct"}'
    python bench/train_scaling.py --model tiny --steps 2     # seconds; used by tests

The last line is ``scaling X.XX`` (0.00 when the losses differ).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import chat_example, describe_machine, median  # noqa: E402

from worker.training.callbacks import NullCallbacks  # noqa: E402
from worker.training.config import TrainingConfig  # noqa: E402

DEFAULT_CACHE = BENCH_DIR.parent / "var" / "model-cache"
MODELS = {"tiny": "tuna-tiny-test", "smollm2-135m": "SmolLM2-135M-Instruct"}


class StepClock(NullCallbacks):
    """When each step ended, its loss and the tokens trained so far."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int, float, int]] = []

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.steps.append(
            (time.perf_counter(), step, metrics["train_loss"], int(metrics["trained_tokens"]))
        )

    def tokens_per_second(self, warmup: int) -> float:
        rates = [
            (tokens - prev_tokens) / (at - prev_at)
            for (prev_at, _, _, prev_tokens), (at, step, _, tokens) in zip(
                self.steps, self.steps[1:], strict=False
            )
            if step > warmup
        ]
        return median(rates) if rates else float("nan")

    @property
    def losses(self) -> dict[int, float]:
        return {step: loss for _, step, loss, _ in self.steps}


def write_dataset(path: Path, n: int, seed: int, tokens: int) -> Path:
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(n):
            out.write(json.dumps(chat_example(rng, tokens, 0.5)) + "\n")
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    from worker.training.launch import train_on
    from worker.training.loop import train

    base = args.base or MODELS[args.model]
    n_steps = args.warmup_steps + args.steps + 1
    with tempfile.TemporaryDirectory(prefix="tuna-scaling-") as folder:
        data = write_dataset(
            Path(folder) / "train.jsonl", args.batch_size * n_steps, args.seed, args.tokens
        )

        def config(name: str) -> TrainingConfig:
            return TrainingConfig(
                base_model=base,
                model_cache_dir=args.model_cache_dir,
                local_models=json.loads(args.local_models or "{}"),
                training_file=data,
                output_dir=Path(folder) / name,
                training_type=args.training_type,
                n_epochs=1,
                batch_size=args.batch_size,
                seed=args.seed,
                device=args.device,
                compile="off",
                lora_dropout=0.0,  # the ranks' dropout streams differ from one process's
                precision=args.precision,
                checkpoint_every_epoch=False,
            )

        one, many = StepClock(), StepClock()
        train(config("one"), one)
        train_on(args.processes, config("many"), many)
    diffs = [abs(many.losses[s] - loss) / max(abs(loss), 1e-6) for s, loss in one.losses.items()]
    baseline = one.tokens_per_second(args.warmup_steps)
    parallel = many.tokens_per_second(args.warmup_steps)
    parity = bool(diffs) and max(diffs) <= args.loss_rtol
    speedup = parallel / baseline if parity else 0.0
    return {
        "model": base,
        "training_type": args.training_type,
        "device": args.device,
        "processes": args.processes,
        "machine": describe_machine(),
        "one_process_tokens_per_s": round(baseline, 1),
        "n_processes_tokens_per_s": round(parallel, 1),
        "max_loss_rel_diff": max(diffs) if diffs else None,
        "loss_parity": parity,
        "speedup": round(speedup, 3),
        "scaling": round(speedup / args.processes, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--base", default=None, help="another base model name (--local-models)")
    parser.add_argument("--local-models", default=None, help='JSON {"name": "/folder"}')
    parser.add_argument("--training-type", choices=("lora", "full"), default="lora")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per example")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after warmup)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-rtol", type=float, default=1e-3)
    parser.add_argument("--model-cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    print(f"scaling {result['scaling']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
