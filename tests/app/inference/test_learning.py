"""It learned: a LoRA job on the bundled SmolLM2-135M-Instruct, served by the API, beats the
base model on held-out inputs.

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
from tests.worker.test_job_flow import TERMINAL, wait_for

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
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
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
