"""The schema's own entry points: request messages, one example, a file's lines.

Its rules, message by message, are tested through the upload validator
(tests/app/files/test_validation.py); that the worker agrees line for line, in
test_dataset_agreement.py.
"""

from __future__ import annotations

import json

import pytest

from tuna_core.dataset import (
    METHOD_FORMATS,
    DatasetFormat,
    ExampleError,
    LineChecker,
    check_example,
    check_request_messages,
)

USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello"}


def test_request_messages_come_back_as_the_template_takes_them() -> None:
    messages = [
        {"role": "developer", "content": "Be brief.", "name": None},
        USER,
        {**ANSWER, "refusal": None, "tool_calls": None, "audio": None},
    ]
    assert check_request_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        USER,
        ANSWER,
    ]
    assert messages[0]["role"] == "developer"  # the caller's objects are left as they were


@pytest.mark.parametrize(
    ("messages", "path", "param", "code"),
    [
        ([], "messages", "messages", "invalid_format"),
        ([{**USER, "weight": 1}], "messages[0]", "messages[0].weight", "invalid_format"),
        ([{**USER, "audio": {"id": "x"}}], "messages[0].audio", "messages[0].audio", "unsupported"),
        ([{"role": "user", "content": "\ud800"}], "messages[0].content", "messages[0].content",
         "invalid_format"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0].type",
         "messages[0].content[0].type", "unsupported"),
    ],
)  # fmt: skip
def test_a_refused_request_message_names_its_field(
    messages: list[object], path: str, param: str, code: str
) -> None:
    with pytest.raises(ExampleError) as caught:
        check_request_messages(messages)
    assert (caught.value.path, caught.value.param, caught.value.code) == (path, param, code)


def test_one_example_is_checked_against_its_format() -> None:
    assert check_example({"messages": [USER, ANSWER]}) is DatasetFormat.CHAT
    assert check_example({"prompt": "a", "completion": "b"}) is DatasetFormat.COMPLETION
    with pytest.raises(ExampleError, match=r"^messages\[0\]\.content: unpaired surrogate"):
        check_example({"messages": [{"role": "user", "content": "\udfff"}, ANSWER]})
    with pytest.raises(ExampleError, match="expected a JSON object, got array"):
        check_example([])


def test_a_file_has_one_format_and_counts_its_examples() -> None:
    lines = LineChecker()
    assert lines.check(1, b"   ") is None  # blank: not an example
    example = lines.check(2, json.dumps({"prompt": "a", "completion": "b"}).encode())
    assert example is not None and example.format is DatasetFormat.COMPLETION
    with pytest.raises(ExampleError, match=r"mixed formats: .* started as completion \(line 2\)"):
        lines.check(3, json.dumps({"messages": [USER, ANSWER]}).encode())
    assert (lines.example_count, lines.format) == (2, DatasetFormat.COMPLETION)


def test_every_method_trains_on_its_own_formats() -> None:
    assert METHOD_FORMATS["supervised"] == {DatasetFormat.CHAT, DatasetFormat.COMPLETION}
    assert METHOD_FORMATS["dpo"] == {DatasetFormat.PREFERENCE}
