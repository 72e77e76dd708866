"""What gcp mode reaches besides the CLIs: the Hugging Face Hub's auth check on 127.0.0.1
(`HF_ENDPOINT`), and application-default credentials as `gcloud auth application-default login`
leaves them. Gemini itself is the stand-in (`HYBRIDCHAT_GEMINI_URL`), Firestore the emulator.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

GEMMA_REPO = "google/gemma-3-12b-it"
GRANTED_TOKEN = "hf_FAKEnotebookTOKEN0123456789"  # the notebooks' fake HF_TOKEN
UNGRANTED_TOKEN = "hf_FAKEnoLicenceTOKEN012345678"


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/models/{owner}/{name}/auth-check")
    def auth_check(owner: str, name: str, request: Request) -> JSONResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token == GRANTED_TOKEN and f"{owner}/{name}" == GEMMA_REPO:
            return JSONResponse({})
        if token == UNGRANTED_TOKEN:
            message = f"Access to model {owner}/{name} is restricted. You must have access to it and be authenticated to access it."
            return JSONResponse({"error": message}, status_code=403,
                                headers={"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401,
                            headers={"X-Error-Message": "Invalid credentials in Authorization header"})

    return app


def application_default_credentials(folder: Path) -> Path:
    """An ``authorized_user`` credentials file as `gcloud auth application-default login`
    writes it, holding an access token that has not expired: `google-auth` loads it and sends
    the token, and needs no refresh (its token endpoint is fixed to Google's)."""
    path = folder / "application_default_credentials.json"
    path.write_text(json.dumps({
        "type": "authorized_user", "client_id": "fake-client.apps.googleusercontent.com",
        "client_secret": "fake-client-secret", "refresh_token": "fake-refresh-token",
        "token": "fake-access-token", "expiry": "2099-01-01T00:00:00Z",
    }))
    return path
