"""Every non-2xx answer is OpenAI's error envelope, with no stack trace."""

from __future__ import annotations

from tests.conftest import LiveServer, make_settings, serve_in_thread


def assert_envelope(body: dict, status: int, response_status: int) -> None:
    assert response_status == status
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]


def test_unknown_route_and_method(server: LiveServer, api_key: str) -> None:
    with server.http(api_key) as http:
        missing = http.get("/v1/nothing-here")
        wrong_method = http.put("/v1/files")
    assert_envelope(missing.json(), 404, missing.status_code)
    assert_envelope(wrong_method.json(), 405, wrong_method.status_code)


def test_invalid_query_parameter(server: LiveServer, api_key: str) -> None:
    with server.http(api_key) as http:
        response = http.get("/v1/files", params={"limit": 0})
    assert_envelope(response.json(), 400, response.status_code)
    assert response.json()["error"]["param"] == "limit"


def test_a_value_no_union_member_accepts_names_the_parameter(
    server: LiveServer, api_key: str
) -> None:
    """`stop: 5` fails `str` and `list[str]` alike: the parameter is `stop`, not `stop.str`."""
    body = {"model": "tuna-tiny-test", "prompt": "x", "stop": 5}
    with server.http(api_key) as http:
        response = http.post("/v1/completions", json=body)
    assert_envelope(response.json(), 400, response.status_code)
    error = response.json()["error"]
    assert error["param"] == "stop"
    assert error["message"] == "Invalid type for 'stop': expected one of str, list[str]."


def test_unexpected_exception_is_a_plain_500(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(make_settings(tmp_path, None))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.get("/boom")
    assert_envelope(response.json(), 500, response.status_code)
    assert "secret" not in response.text


def test_upload_over_the_cap_is_413(tmp_path) -> None:
    from app.bootstrap import create_key, prepare
    from app.main import create_app

    settings = make_settings(tmp_path, None, max_upload_bytes=1000)
    prepare(settings)
    key = create_key(settings, "capped")
    url, stop = serve_in_thread(create_app(settings))
    try:
        import httpx

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            response = http.post(
                "/v1/files", files={"file": ("big.txt", b"x" * 5000)}, data={"purpose": "user_data"}
            )
    finally:
        stop()
    assert_envelope(response.json(), 413, response.status_code)
    leftovers = [p for p in settings.resolved_storage_dir.rglob("*") if p.is_file()]
    assert leftovers == []
