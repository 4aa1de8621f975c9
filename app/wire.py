"""What OpenAI's wire shapes need beyond plain pydantic models."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class OmitWhenNone(BaseModel):
    """A response object with fields that OpenAI's schema makes optional but not nullable.

    The fields named in `omit_when_none` are left out while they hold None: clients generated
    from the schema refuse a `null` there, and the `openai` SDK reads a missing field as None
    anyway. Give such fields a default of None so that FastAPI can validate the dumped object.
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    # No return annotation: pydantic would take it as the serialized JSON schema and replace
    # the object's documented fields with a bare `object` in /openapi.json.
    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler):
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.omit_when_none}
