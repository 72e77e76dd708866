"""The Vertex AI Model Garden vLLM container's ``POST /generate``, as the codelab calls it.

Request ``{"prompt", "temperature", "top_p", "max_tokens", "stop"}``; answer
``{"predictions": [text]}`` where the text may echo the prompt as ``Prompt:\\n…\\nOutput:\\n…``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    raw_response: bool = False  # the container's switch to skip the prompt echo


class GenerateResponse(BaseModel):
    predictions: list[str]


def echoed(prompt: str, output: str) -> str:
    """The container's default answer text: the prompt echoed, then the output."""
    return f"Prompt:\n{prompt}\nOutput:\n{output}"
