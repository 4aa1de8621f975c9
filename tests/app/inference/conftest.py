"""Fixtures for inference: tenants, published fine-tuned models, a small dedicated server.

Most tests use adapters made with peft directly (random, non-zero LoRA weights) and published as
a job's model row: they answer differently from the base and from each other, which is what the
adapter-selection tests need, and they cost no training time.  `test_job_models.py` serves models
that the real worker trained through the jobs API.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from app.bootstrap import prepare
from app.fine_tuning.repository import FineTuningRepository
from app.inference.engine import LocalEngine
from app.main import create_app
from app.orm import FineTuningJob, Project
from tests.conftest import REPO_ROOT, LiveServer, make_settings, serve_in_thread
from tuna_core.model_ids import checkpoint_model_id, fine_tuned_model_id

TINY = "tuna-tiny-test"
MODEL_CACHE = REPO_ROOT / "var" / "model-cache"


@dataclass
class Tenant:
    name: str
    project_id: str
    key: str
    client: openai.OpenAI


def new_tenant(server: LiveServer) -> Tenant:
    name = f"org-{uuid.uuid4().hex[:10]}"
    key = server.new_key(name)
    with server.app.state.db.session_scope() as session:
        project_id = session.scalar(select(Project.id).where(Project.name == name))
    assert project_id
    return Tenant(name, project_id, key, server.client(key))


@pytest.fixture
def tenant(server: LiveServer) -> Tenant:
    return new_tenant(server)


@pytest.fixture
def other_tenant(server: LiveServer) -> Tenant:
    return new_tenant(server)


def publish(
    server: LiveServer,
    tenant: Tenant,
    source: Path,
    *,
    training_type: str = "lora",
    checkpoint_step: int | None = None,
) -> str:
    """Copy a model folder into storage and record it as a succeeded job's model (or checkpoint,
    with the job's checkpoint row, as the worker records one)."""
    job_id = "ftjob-" + uuid.uuid4().hex[:24]
    model_id = fine_tuned_model_id(TINY, tenant.name, "test", job_id)
    key = f"jobs/{job_id}/final"
    if checkpoint_step is not None:
        model_id = checkpoint_model_id(model_id, checkpoint_step)
        key = f"jobs/{job_id}/checkpoints/step-{checkpoint_step}"
    storage = server.app.state.storage
    shutil.copytree(source, storage.path(key))
    with server.app.state.db.session_scope() as session:
        job = FineTuningJob(
            id=job_id,
            project_id=tenant.project_id,
            model=TINY,
            training_file="file-test",
            seed=0,
            hyperparameters={"training_type": training_type},
            status="succeeded",
        )
        session.add(job)
        session.flush()
        jobs = FineTuningRepository(session)
        if checkpoint_step is None:
            jobs.publish_model(job, model_id, key, training_type, TINY)
        else:
            jobs.record_checkpoint(
                job,
                step=checkpoint_step,
                model_id=model_id,
                storage_key=key,
                metrics={"step": checkpoint_step},
                training_type=training_type,
                base_model=TINY,
            )
    return model_id


@dataclass
class ModelFolders:
    adapter_a: Path
    adapter_b: Path
    full: Path

    @property
    def adapter_bytes(self) -> int:
        return (self.adapter_a / "adapter_model.safetensors").stat().st_size


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> ModelFolders:
    """Two random LoRA adapters and a perturbed full copy of the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuna_core.base_models import resolve_base_model

    base_dir = resolve_base_model(TINY, MODEL_CACHE)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    root = tmp_path_factory.mktemp("inference-models")
    folders = []
    for seed in (1, 2):
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lora = LoraConfig(
                r=4,
                lora_alpha=32,
                target_modules="all-linear",
                init_lora_weights=False,  # random A and B: the adapter changes the answers
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, lora)
        target = root / f"adapter-{seed}"
        peft_model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        folders.append(target)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    full = root / "full"
    model.save_pretrained(full)
    tokenizer.save_pretrained(full)
    return ModelFolders(folders[0], folders[1], full)


@dataclass
class SmallServer:
    live: LiveServer
    engine: LocalEngine


@pytest.fixture(scope="module")
def small_server(
    tmp_path_factory: pytest.TempPathFactory, model_folders: ModelFolders
) -> Iterator[SmallServer]:
    """Its own app (SQLite): one request decoding at a time, a queue of one, and an adapter cache
    that holds a single adapter."""
    data_dir = tmp_path_factory.mktemp("tuna-small")
    settings = make_settings(data_dir, None)
    prepare(settings)
    app = create_app(settings)
    engine = LocalEngine(
        settings.resolved_model_cache_dir,
        queue_size=1,
        max_batch_size=1,
        adapter_cache_bytes=int(model_folders.adapter_bytes * 1.5),
    )
    app.state.inference = engine
    url, stop = serve_in_thread(app)
    yield SmallServer(LiveServer(app=app, settings=settings, url=url, backend="sqlite"), engine)
    stop()
    engine.close()
