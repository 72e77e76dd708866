"""Gemini's REST ``generateContent`` / ``streamGenerateContent`` bodies, via the SDK's own types.

Spec: https://ai.google.dev/api/generate-content and, for Vertex AI,
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent.
``google-genai``'s pydantic types already match the wire format (camelCase aliases), so
the stand-in server parses and answers with them and cannot drift from the real client.
"""

from __future__ import annotations

from typing import Any

from google.genai import types
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class GenerateContentRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    contents: list[types.Content]
    system_instruction: types.Content | None = None
    generation_config: types.GenerationConfig | None = None


def dump(response: types.GenerateContentResponse) -> str:
    """JSON for the wire, as Google's servers write it."""
    return response.model_dump_json(by_alias=True, exclude_none=True)


def error_body(code: int, status: str, message: str) -> dict[str, Any]:
    """Google's error envelope (google.rpc.Status)."""
    return {"error": {"code": code, "message": message, "status": status}}
