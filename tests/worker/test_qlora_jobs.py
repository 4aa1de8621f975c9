"""A QLoRA job on a worker without a CUDA GPU (this machine): a real worker refuses it with
`qlora_needs_cuda`, naming the parameter, and publishes nothing."""

from __future__ import annotations

import openai

from tests.conftest import WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, create_job, upload, wait_for


def test_a_qlora_job_fails_clearly_without_a_gpu(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, upload(client, chat_jsonl(12)), quantization="4bit")
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error is not None
    assert (done.error.code, done.error.param) == ("qlora_needs_cuda", "quantization")
    assert "needs a CUDA GPU" in (done.error.message or "")
    assert done.fine_tuned_model is None
    assert not [e for e in all_events(client, job.id) if e.type == "metrics"]
