"""Rewrite the JSON Schema files in this folder from OpenAI's published OpenAPI document.

    .venv/bin/python tests/openai_schemas/extract.py PATH/TO/openapi.yaml [--commit SHA]

Each output file is one response object of OpenAI's API as a standalone JSON Schema (draft
2020-12): every `$ref` it reaches is bundled under `$defs`, so any validator can load it alone.
The translation from OpenAPI must be faithful, because the point is to catch a field Tuna sends
as `null` where OpenAI's clients expect a value:

* `nullable: true` (OpenAPI 3.0 style, still present in OpenAI's 3.1 document) becomes
  `anyOf: [<the schema>, {"type": "null"}]`; a field without it stays non-nullable.
* Boolean `exclusiveMinimum`/`exclusiveMaximum` (3.0 style) become the 2020-12 numeric form.
* Annotations that do not validate (descriptions, examples, `x-*` vendor keys, `discriminator`)
  are dropped so the files stay readable; nothing that constrains a value is dropped.

Where Tuna's documented behaviour differs from the document, `PATCHES` below changes the
schema explicitly, each with the reason; nothing else is edited.  See README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DRAFT = "https://json-schema.org/draft/2020-12/schema"
COMPONENTS = "#/components/schemas/"

#: The objects written out, by their names in OpenAI's document.
OBJECTS = (
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "FineTuningJob",
    "ListPaginatedFineTuningJobsResponse",
    "FineTuningJobEvent",
    "ListFineTuningJobEventsResponse",
    "FineTuningJobCheckpoint",
    "ListFineTuningJobCheckpointsResponse",
    "Model",
    "ListModelsResponse",
    "DeleteModelResponse",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateCompletionStreamResponse",  # derived below: OpenAI's document has no such name
    "ErrorResponse",
    "Eval",
    "EvalList",
    "DeleteEvalResponse",  # derived below: inline in the document's DELETE /evals/{eval_id}
    "EvalRun",
    "EvalRunList",
    "DeleteEvalRunResponse",  # derived below: inline in DELETE /evals/{eval_id}/runs/{run_id}
    "EvalRunOutputItem",
    "EvalRunOutputItemList",
)

# Keywords whose value is a map of name -> schema (the names are data, not keywords).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_DROPPED = {"description", "example", "examples", "title", "discriminator", "externalDocs"}


def translate(schema: Any) -> Any:
    """One OpenAPI schema object as JSON Schema 2020-12 (see the module docstring)."""
    if not isinstance(schema, dict):
        return schema  # `true`/`false` schemas
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or key.startswith("x-") or key == "nullable":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: translate(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [translate(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = translate(value)
        elif key == "$ref":
            out[key] = "#/$defs/" + value.removeprefix(COMPONENTS)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value:  # 3.0: `minimum: 0, exclusiveMinimum: true` means `> 0`
                out[key] = schema[bound]
        else:
            out[key] = copy.deepcopy(value)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        if schema.get(key) is True:
            out.pop(bound, None)
    if schema.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _refs(schema: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENTS):
            found.add(ref.removeprefix(COMPONENTS))
        for value in schema.values():
            found |= _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= _refs(value)
    return found


def bundle(name: str, components: dict[str, Any], source: str) -> dict[str, Any]:
    """`name` as a standalone schema: itself at the root, everything it reaches in `$defs`."""
    needed: set[str] = set()
    todo = sorted(_refs(components[name]))
    while todo:
        ref = todo.pop()
        if ref not in needed:
            needed.add(ref)
            todo += sorted(_refs(components[ref]) - needed)
    root = translate(components[name])
    document: dict[str, Any] = {
        "$schema": DRAFT,
        "$comment": f"{source}; generated by tests/openai_schemas/extract.py, do not edit",
        "title": name,
        **root,
    }
    if needed:
        document["$defs"] = {ref: translate(components[ref]) for ref in sorted(needed)}
    return document


# -- patches: each one a deliberate, documented difference from OpenAI's document ------------


def _add_enum_value(schema: dict[str, Any], value: str) -> None:
    assert value not in schema["enum"], f"{value!r} is in OpenAI's enum now: drop this patch"
    schema["enum"].append(value)


def _status_paused(components: dict[str, Any]) -> None:
    # Tuna extension (DESIGN.md rule 3, openai-compat.md): `POST .../pause` leaves a job
    # `paused`. OpenAI's document has the pause endpoint but not the status in this enum.
    _add_enum_value(components["FineTuningJob"]["properties"]["status"], "paused")


def _file_purpose_evals(components: dict[str, Any]) -> None:
    # OpenAI's own `CreateFileRequest` accepts `purpose: evals` uploads (so does Tuna), but the
    # file object's enum lacks it: the object describing such an upload must still validate.
    assert "evals" in components["CreateFileRequest"]["properties"]["purpose"]["enum"]
    _add_enum_value(components["OpenAIFile"]["properties"]["purpose"], "evals")


def _empty_file_list_ids(components: dict[str, Any]) -> None:
    # OpenAI answers an empty page with `"first_id": null, "last_id": null` although this
    # schema says string (clients broke on it: 64bit/async-openai#242, an empty list of the
    # same kind); its checkpoint list declares them nullable. Tuna does the same, and only for
    # an empty page: a page with data must still name its first and last ids.
    for name in ("ListFilesResponse", "EvalList", "EvalRunList", "EvalRunOutputItemList"):
        _nullable_ids_when_empty(components[name])


def _nullable_ids_when_empty(listing: dict[str, Any]) -> None:
    for key in ("first_id", "last_id"):
        assert listing["properties"][key]["type"] == "string"
        listing["properties"][key] = {"type": "string", "nullable": True}
    listing["if"] = {"properties": {"data": {"minItems": 1}}}
    listing["then"] = {
        "properties": {"first_id": {"type": "string"}, "last_id": {"type": "string"}}
    }


def _completion_chunks(components: dict[str, Any]) -> None:
    # OpenAI streams `/v1/completions` as `text_completion` objects of the response's shape,
    # with two differences its document states elsewhere: a choice's `finish_reason` is null
    # until its last chunk, and with `stream_options.include_usage` "all other chunks will also
    # include a `usage` field, but with a null value" (`ChatCompletionStreamOptions`).
    chunk = copy.deepcopy(components["CreateCompletionResponse"])
    choice = chunk["properties"]["choices"]["items"]
    choice["properties"]["finish_reason"]["nullable"] = True
    chunk["properties"]["usage"] = {"$ref": COMPONENTS + "CompletionUsage", "nullable": True}
    components["CreateCompletionStreamResponse"] = chunk


def _eval_run_error(components: dict[str, Any]) -> None:
    # A run without an error: OpenAI's own examples of `EvalRun` (and of its list) send
    # `"error": null`, which the schema's non-nullable `EvalApiError` does not allow.
    # So do its examples of an output item's `sample` that went well.
    for properties in (
        components["EvalRun"]["properties"],
        components["EvalRunOutputItem"]["properties"]["sample"]["properties"],
    ):
        assert "nullable" not in properties["error"]
        properties["error"] = {**properties["error"], "nullable": True}


def _tuna_graders(components: dict[str, Any]) -> None:
    # Tuna extension (docs/evals.md): `regex` and `json_check` testing criteria, returned as
    # given; every other grader keeps OpenAI's schema.
    extension = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["regex", "json_check"]},
            "name": {"type": "string"},
        },
        "required": ["type", "name"],
    }
    items = components["Eval"]["properties"]["testing_criteria"]["items"]
    items["oneOf"].append(extension)


def _tuna_integrations(components: dict[str, Any]) -> None:
    # Tuna extension (docs/fine-tuning.md#integrations): a job's `mlflow` integration, shown
    # back as given; `wandb` keeps OpenAI's schema.
    extension = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["mlflow"]},
            "mlflow": {
                "type": "object",
                "properties": {"experiment_name": {"type": "string"}},
                "required": ["experiment_name"],
            },
        },
        "required": ["type", "mlflow"],
    }
    listed = components["FineTuningJob"]["properties"]["integrations"]["anyOf"][0]
    items = listed["items"]
    items["oneOf"].append(extension)


def _template_messages(components: dict[str, Any]) -> None:
    # A run's `input_messages.template` entry `{"role": "user", "content": "..."}` is both an
    # `EasyInputMessage` and an `EvalItem` (OpenAI's own examples are such messages), so the
    # document's `oneOf` refuses every plain message; `anyOf` says what it means.
    source = components["CreateEvalCompletionsRunDataSource"]["properties"]["input_messages"]
    template = source["oneOf"][0]["properties"]["template"]["items"]
    template["anyOf"] = template.pop("oneOf")


def _recursive_filter(components: dict[str, Any]) -> None:
    # `CompoundFilter` (reached from a run's file-search tools) uses draft 2019-09's
    # `$recursiveAnchor`/`$recursiveRef: "#"`, which 2020-12 validators refuse; it means a
    # reference to `CompoundFilter` itself.
    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("$recursiveRef") == "#":
                return {"$ref": COMPONENTS + "CompoundFilter"}
            return {k: rewrite(v) for k, v in node.items() if k != "$recursiveAnchor"}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    assert components["CompoundFilter"].get("$recursiveAnchor") is True
    components["CompoundFilter"] = rewrite(components["CompoundFilter"])


def _delete_responses(paths: dict[str, Any], components: dict[str, Any]) -> None:
    # OpenAI's document defines these two inline on their DELETE operations only.
    for name, path in (
        ("DeleteEvalResponse", "/evals/{eval_id}"),
        ("DeleteEvalRunResponse", "/evals/{eval_id}/runs/{run_id}"),
    ):
        response = paths[path]["delete"]["responses"]["200"]["content"]["application/json"]
        components[name] = copy.deepcopy(response["schema"])


PATCHES: tuple[Callable[[dict[str, Any]], None], ...] = (
    _status_paused,
    _file_purpose_evals,
    _empty_file_list_ids,
    _completion_chunks,
    _eval_run_error,
    _tuna_graders,
    _tuna_integrations,
    _template_messages,
    _recursive_filter,
)


def load_components(openapi_yaml: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the document is ~3 MB
    with openapi_yaml.open() as stream:
        document = yaml.load(stream, Loader=loader)
    components: dict[str, Any] = document["components"]["schemas"]
    _delete_responses(document["paths"], components)
    for patch in PATCHES:
        patch(components)
    return components


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openapi_yaml", type=Path, help="openapi.yaml of openai/openai-openapi")
    parser.add_argument("--commit", default="unknown commit", help="recorded in each file")
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args(argv)

    components = load_components(args.openapi_yaml)
    source = f"openai/openai-openapi openapi.yaml at {args.commit}"
    for name in OBJECTS:
        document = bundle(name, components, source)
        text = json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
        (args.output / f"{name}.json").write_text(text)
    print(f"Wrote {len(OBJECTS)} schemas to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
