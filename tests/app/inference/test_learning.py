"""It learned: a LoRA job on the bundled SmolLM2-135M-Instruct, served by the API, beats the
base model on held-out inputs, measured by chat completions, by an eval run on each model, and
by the job's own automatic comparison on its validation set (the held-out words).

The task is a fixed answer format the base never produces on its own: "Wrap: lantern" ->
"<<lantern>>".  The held-out words never appear in training, so a model that only memorised its
training answers scores zero; one that learned the format copies the new word into it.
"""

from __future__ import annotations

import io
import json

import openai
import pytest

from tests.conftest import WorkerProcess
from tests.worker.test_eval_runs import wait_for_run
from tests.worker.test_job_comparison import job_eval
from tests.worker.test_job_flow import TERMINAL, wait_for
from tuna_core.evals import expected_answer_criteria

BASE = "SmolLM2-135M-Instruct"
TRAIN_WORDS = [
    "apple",
    "river",
    "candle",
    "forest",
    "pencil",
    "window",
    "garden",
    "silver",
    "rocket",
    "butter",
    "mirror",
    "violin",
    "planet",
    "basket",
    "thunder",
    "pillow",
    "orange",
    "bridge",
    "marble",
    "jacket",
    "castle",
    "dragon",
    "helmet",
    "island",
    "ladder",
    "meadow",
    "needle",
    "ocean",
    "parrot",
    "quilt",
    "saddle",
    "tiger",
    "umbrella",
    "valley",
    "wagon",
    "yellow",
    "zebra",
    "anchor",
    "blossom",
    "copper",
]
TEST_WORDS = [
    "lantern",
    "harbor",
    "falcon",
    "pepper",
    "cactus",
    "velvet",
    "puzzle",
    "rabbit",
    "tunnel",
    "walnut",
    "kettle",
    "lemon",
    "glacier",
    "orchid",
    "canyon",
    "comet",
    "donkey",
    "feather",
    "hammer",
    "spider",
]


def prompt(word: str) -> str:
    return f"Wrap: {word}"


def answer(word: str) -> str:
    return f"<<{word}>>"


def exact_match(client: openai.OpenAI, model: str) -> float:
    hits = 0
    for word in TEST_WORDS:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt(word)}],
            max_tokens=12,
            temperature=0,
        )
        hits += (reply.choices[0].message.content or "").strip() == answer(word)
    return hits / len(TEST_WORDS)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_fine_tuned_model_beats_base(client: openai.OpenAI, worker: WorkerProcess) -> None:
    assert not set(TRAIN_WORDS) & set(TEST_WORDS)
    rows = [
        {
            "messages": [
                {"role": "user", "content": prompt(w)},
                {"role": "assistant", "content": answer(w)},
            ]
        }
        for w in TRAIN_WORDS
    ]
    data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    training_file = client.files.create(
        file=("wrap.jsonl", io.BytesIO(data)), purpose="fine-tune"
    ).id
    held_out = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": prompt(w)},
                    {"role": "assistant", "content": answer(w)},
                ]
            }
        )
        + "\n"
        for w in TEST_WORDS
    )
    validation_file = client.files.create(
        file=("wrap-valid.jsonl", io.BytesIO(held_out.encode())), purpose="fine-tune"
    ).id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
        validation_file=validation_file,
        suffix="wrap",
        seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5},
    )
    done = wait_for(client, job.id, TERMINAL, timeout=900)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model

    base_em = exact_match(client, BASE)
    tuned_em = exact_match(client, done.fine_tuned_model)
    print(f"exact match on held-out words: base {base_em:.2f}, fine-tuned {tuned_em:.2f}")
    assert base_em <= 0.1
    assert tuned_em >= base_em + 0.5

    # The same question through the Evals API, as a user would ask it: one eval, a run per model.
    items = "".join(json.dumps({"word": w, "answer": answer(w)}) + "\n" for w in TEST_WORDS)
    items_file = client.files.create(
        file=("wrap-eval.jsonl", io.BytesIO(items.encode())), purpose="evals"
    ).id
    evaluation = client.evals.create(
        name="wrap",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=expected_answer_criteria("answer"),  # type: ignore[arg-type]
    )
    pass_rates = {}
    for model in (BASE, done.fine_tuned_model):
        run = client.evals.runs.create(
            evaluation.id,
            name=model,
            data_source={
                "type": "completions",
                "source": {"type": "file_id", "id": items_file},
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "Wrap: {{ item.word }}"}],
                },
                "model": model,
                "sampling_params": {"temperature": 0, "max_completions_tokens": 12},
            },
        )
        finished = wait_for_run(client, evaluation.id, run.id, timeout=600)
        assert finished.status == "completed", finished.error
        graded = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
        assert len(graded) == len(TEST_WORDS)
        pass_rates[model] = finished.result_counts.passed / finished.result_counts.total
    print(f"eval pass rate: {pass_rates}")
    assert pass_rates[done.fine_tuned_model] >= pass_rates[BASE] + 0.5

    # And with no call at all: the job compared its models on its validation set by itself.
    table = job_eval(client, job.id, timeout=900)
    for row in table["rows"]:
        print(
            f"{row['label']:>8}: exact {row['exact_match']:.2f} similarity "
            f"{row['similarity']:.2f} valid loss {row['valid_loss']:.4f} best {row['best']}"
        )
    base, *checkpoints, final = table["rows"]
    assert (base["role"], final["role"]) == ("base", "final")
    assert [c["role"] for c in checkpoints] == ["checkpoint", "checkpoint"]  # epochs 1 and 2
    assert table["items"] == len(TEST_WORDS)
    assert base["exact_match"] <= 0.1
    assert final["exact_match"] >= base["exact_match"] + 0.5
    assert final["valid_loss"] < base["valid_loss"]
    (best,) = [row for row in table["rows"] if row["best"]]
    assert best["exact_match"] == max(row["exact_match"] for row in table["rows"])
