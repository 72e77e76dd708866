"""Clients of the real google-genai SDK pointed at a server on 127.0.0.1."""

from __future__ import annotations

import google.oauth2.credentials
from google import genai
from google.genai import types


def api_key_client(url: str, **options) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=url, **options))


def vertex_client(url: str, **options) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="test-project",
        location="global",
        credentials=google.oauth2.credentials.Credentials(token="test"),
        http_options=types.HttpOptions(base_url=url, **options),
    )
