"""`/v1/models` through the official SDK: base models, a project's `ft:` models, tenancy."""

from __future__ import annotations

import uuid

import openai
import pytest

from app.auth import get_or_create_project
from app.bootstrap import create_key, prepare
from app.fine_tuning.repository import FineTuningRepository
from app.orm import FineTuningJob
from tests.conftest import LiveServer, make_settings, serve_in_thread
from tuna_core.model_ids import checkpoint_model_id, fine_tuned_model_id

BASE = "SmolLM2-135M-Instruct"
SMOLLM2_CREATED = 1730419200


def add_fine_tuned_models(server: LiveServer, project_name: str) -> tuple[str, str]:
    """What a finished job leaves behind: a final model and one checkpoint model."""
    with server.app.state.db.session_scope() as session:
        project = get_or_create_project(session, project_name)
        repo = FineTuningRepository(session)
        job = repo.add_job(
            FineTuningJob(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                project_id=project.id,
                model=BASE,
                training_file="file-x",
                seed=0,
                hyperparameters={},
                status="succeeded",
                result_files=[],
            )
        )
        final = fine_tuned_model_id(BASE, project_name, "helper", job.id)
        ckpt = checkpoint_model_id(final, 10)
        for model_id, step in ((ckpt, 10), (final, None)):
            repo.add_model(
                model_id=model_id,
                project_id=project.id,
                job_id=job.id,
                base_model=BASE,
                training_type="lora",
                storage_key=f"models/{job.id}/{step}",
                checkpoint_step=step,
            )
    return final, ckpt


def test_base_models_are_listed(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {BASE, "tuna-tiny-test"} <= set(models)  # the test server enables test models
    smol = models[BASE]
    assert (smol.object, smol.owned_by, smol.created) == ("model", "tuna", SMOLLM2_CREATED)


def test_retrieve_base_model_by_name_and_alias(client: openai.OpenAI) -> None:
    assert client.models.retrieve(BASE).owned_by == "tuna"
    alias = client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (alias.id, alias.created) == ("HuggingFaceTB/SmolLM2-135M-Instruct", SMOLLM2_CREATED)


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    for name in ("gpt-4o-mini", "ft:SmolLM2-135M-Instruct:org::AAAAAAAA", "a/b/c"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(name)
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert caught.value.body["param"] == "model"  # type: ignore[index]


def test_fine_tuned_models_belong_to_their_project(server: LiveServer) -> None:
    name = f"org-{uuid.uuid4().hex[:10]}"
    client = server.client(server.new_key(name))
    final, ckpt = add_fine_tuned_models(server, name)
    assert final.startswith(f"ft:{BASE}:{name}:helper:") and len(final.rsplit(":", 1)[1]) == 8
    assert ckpt == f"{final}:ckpt-step-10"

    listed = {m.id: m for m in client.models.list()}
    assert {final, ckpt} <= set(listed)
    assert listed[final].owned_by == name
    retrieved = client.models.retrieve(ckpt)
    assert (retrieved.id, retrieved.owned_by) == (ckpt, name)

    stranger = server.client(server.new_key())
    assert not {final, ckpt} & {m.id for m in stranger.models.list()}
    for model_id in (final, ckpt):
        with pytest.raises(openai.NotFoundError) as caught:
            stranger.models.retrieve(model_id)
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_test_models_need_the_setting(tmp_path) -> None:
    """Without `enable_test_models`, the random tiny model is neither listed nor trainable."""
    settings = make_settings(tmp_path, None).model_copy(update={"enable_test_models": False})
    prepare(settings)
    from app.main import create_app

    app = create_app(settings)
    url, stop = serve_in_thread(app)
    try:
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=create_key(settings, "p"), max_retries=0
        )
        assert "tuna-tiny-test" not in {m.id for m in client.models.list()}
        assert BASE in {m.id for m in client.models.list()}
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("tuna-tiny-test")
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="tuna-tiny-test", training_file="file-x")
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    finally:
        stop()
        app.state.db.dispose()
