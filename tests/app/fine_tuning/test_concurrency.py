"""Many clients at once: every creation lands once, and each job is enqueued once, committed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from tests.app.fine_tuning.conftest import RecordingQueue, upload
from tests.conftest import LiveServer


def test_fifty_concurrent_job_creations(
    server: LiveServer, client: openai.OpenAI, job_queue: RecordingQueue
) -> None:
    training_file = upload(client)

    def create(i: int) -> str:
        return client.fine_tuning.jobs.create(
            model="tuna-tiny-test", training_file=training_file, seed=i, metadata={"n": str(i)}
        ).id

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(create, range(50)))

    assert len(set(ids)) == 50
    listed = [job.id for job in client.fine_tuning.jobs.list(limit=20)]  # SDK pages through all
    assert sorted(listed) == sorted(ids)
    assert sorted(job_id for job_id, _ in job_queue.enqueued) == sorted(ids)
    assert {status for _, status in job_queue.enqueued} == {"validating_files"}
    for job_id in ids[:5]:
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id)]
        assert messages.count(f"Created fine-tuning job: {job_id}") == 1
