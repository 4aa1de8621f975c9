"""The Files API through the official `openai` SDK, on SQLite and on Postgres."""

from __future__ import annotations

import io
import json

import openai
import pytest

from app.orm import File
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl


def upload(client: openai.OpenAI, content: bytes, name: str = "train.jsonl", purpose="fine-tune"):
    return client.files.create(file=(name, io.BytesIO(content)), purpose=purpose)


def stored_files(server: LiveServer) -> list[str]:
    root = server.settings.resolved_storage_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip(client: openai.OpenAI) -> None:
    content = chat_jsonl(12)
    created = upload(client, content)
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(content)
    assert created.filename == "train.jsonl"
    assert created.purpose == "fine-tune"
    assert created.status == "processed"
    assert created.created_at > 1_700_000_000

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == content

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_valid_dataset_records_format_and_count(server: LiveServer, client: openai.OpenAI) -> None:
    created = upload(client, chat_jsonl(15))
    with server.app.state.db.session_scope() as session:
        row = session.get(File, created.id)
        assert row is not None
        assert (row.data_format, row.example_count) == ("chat", 15)


def test_list_paginates_newest_first(client: openai.OpenAI) -> None:
    ids = [upload(client, b"anything", f"f{i}.txt", purpose="user_data").id for i in range(5)]
    first_page = client.files.list(limit=2)
    assert [f.id for f in first_page.data] == ids[::-1][:2]
    assert first_page.has_more
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # SDK follows `after`
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids


def test_list_filters_by_purpose(client: openai.OpenAI) -> None:
    tuned = upload(client, chat_jsonl(10))
    upload(client, b"x", "x.txt", purpose="user_data")
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [tuned.id]


def test_bad_key_is_authentication_error(server: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        server.client("sk-tuna-not-a-real-key").files.list()
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    response = server.http().get("/v1/files")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_file_is_not_found(client: openai.OpenAI) -> None:
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call("file-doesnotexist")
        assert caught.value.body["param"] == "id"  # type: ignore[index]


def test_broken_jsonl_names_each_bad_line(server: LiveServer, client: openai.OpenAI) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    )
    lines = [
        good,
        "{not json",
        good,
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
        json.dumps([1, 2]),
        good,
    ]
    before = stored_files(server)
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, "\n".join(lines).encode())
    message = caught.value.body["message"]  # type: ignore[index]
    assert "Line 2" in message and "Line 4" in message and "Line 5" in message
    assert "Line 1:" not in message and "Line 3" not in message
    assert caught.value.body["param"] == "file"  # type: ignore[index]
    assert stored_files(server) == before
    assert client.files.list().data == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "assistant"),
        (b'\xff\xfe{"messages": []}\n', "UTF-8"),
        (
            b'{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "user", "content": "q"},'
            b' {"role": "assistant", "content": "a"}]}\n',
            "mixed",
        ),
    ],
)
def test_dataset_errors_are_explained(client: openai.OpenAI, content: bytes, expected: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, content)
    assert expected.lower() in caught.value.body["message"].lower()  # type: ignore[index]


def test_other_purposes_are_not_parsed(client: openai.OpenAI) -> None:
    created = upload(client, b"\xff not json at all", "blob.bin", purpose="user_data")
    assert created.status == "processed"


def test_filename_is_never_a_path(server: LiveServer, client: openai.OpenAI) -> None:
    created = upload(client, chat_jsonl(10), name="../../etc/passwd.jsonl")
    assert created.filename == "passwd.jsonl"
    assert all(".." not in path for path in stored_files(server))


def test_expires_after(client: openai.OpenAI) -> None:
    created = client.files.create(
        file=("t.jsonl", io.BytesIO(chat_jsonl(10))),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    with pytest.raises(openai.BadRequestError):
        client.files.create(
            file=("t.jsonl", io.BytesIO(chat_jsonl(10))),
            purpose="fine-tune",
            expires_after={"anchor": "created_at", "seconds": 5},
        )


def test_purpose_is_checked(server: LiveServer, api_key: str) -> None:
    with server.http(api_key) as http:
        missing = http.post("/v1/files", files={"file": ("a.txt", b"x")})
        wrong = http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "nope"})
        no_file = http.post("/v1/files", data={"purpose": "user_data"}, files={"x": ("a", b"")})
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "purpose")
    assert (wrong.status_code, wrong.json()["error"]["param"]) == (400, "purpose")
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")


def test_file_part_before_purpose_is_still_validated(server: LiveServer, api_key: str) -> None:
    """curl users may send the file first; validation must not depend on part order."""
    boundary = "tunaboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        f"Content-Type: application/jsonl\r\n\r\n{{broken\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with server.http(api_key) as http:
        response = http.post("/v1/files", content=body, headers=headers)
    assert response.status_code == 400
    assert "Line 1" in response.json()["error"]["message"]


def test_other_project_gets_not_found(server: LiveServer, client: openai.OpenAI) -> None:
    created = upload(client, chat_jsonl(10))
    stranger = server.client(server.new_key())
    for call in (stranger.files.retrieve, stranger.files.content, stranger.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert stranger.files.list().data == []
    assert client.files.retrieve(created.id).id == created.id
