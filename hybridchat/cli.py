"""The ``hybridchat`` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hybridchat.cli_workshop import lab, room_app
from hybridchat.config import Settings
from hybridchat.redact import configure_logging

if TYPE_CHECKING:
    from rich.text import Text

    from hybridchat.store import HistoryStore

# Shown as escapes: what a terminal would act on (colours, cursor moves, hyperlinks, a bell) or
# reorder (bidirectional overrides). Visitor and model text reaches the operator's terminal.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

app = typer.Typer(help="hybridchat: a hybrid Gemma + Gemini chat app for workshops.", no_args_is_help=True)
sessions_app = typer.Typer(help="Read the saved chat sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(room_app, name="room")
app.command("lab")(lab)


def terminal_safe(text: str) -> str:
    """``text`` as a terminal shows it literally: control characters written as escapes, URLs redacted."""
    from hybridchat.redact import redact

    return _UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode(), redact(text))


def _row(*cells: object) -> list[Text]:
    """A table row whose cells are plain text: Rich markup in them (``[/]``, ``[link=…]``) is not parsed."""
    from rich.text import Text

    return [Text(terminal_safe(str(cell))) for cell in cells]


def _credentials(auth: list[str], auth_file: Path | None, settings: Settings) -> list[tuple[str, str]]:
    """Login accounts from ``--auth``, ``--auth-file`` and ``HYBRIDCHAT_AUTH`` (user:password lines)."""
    if auth:
        typer.echo(
            "warning: --auth puts the password in the process list, where every local user can read it; "
            "use --auth-file or HYBRIDCHAT_AUTH instead.",
            err=True,
        )
    entries = list(auth)
    if auth_file is not None:
        entries += auth_file.read_text().splitlines()
    if settings.auth is not None:
        entries += settings.auth.get_secret_value().splitlines()
    pairs = []
    for entry in (line.strip() for line in entries):
        if not entry or entry.startswith("#"):
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise typer.BadParameter("login entries are user:password", param_hint="--auth-file")
        pairs.append((user, password))
    return pairs


@app.command("serve-local")
def serve_local(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "",
    port: Annotated[int, typer.Option(help="Port (default HYBRIDCHAT_LOCAL_PORT, 8000).")] = 0,
    model: Annotated[
        str, typer.Option(help="Hub id, model directory or .gguf file (default HYBRIDCHAT_LOCAL_MODEL).")
    ] = "",
    served_model_name: Annotated[
        str, typer.Option(help="The name /v1/models gives, as vLLM's flag (default local-stand-in/MODEL).")
    ] = "",
    max_model_len: Annotated[
        int, typer.Option(help="Context length in tokens, as vLLM's flag (default the model's).")
    ] = 0,
    api_key: Annotated[
        str, typer.Option(envvar="VLLM_API_KEY", show_default=False,
                          help="Want this key on the /v1 routes, as vLLM's flag (a room's Gemma); "
                          "set VLLM_API_KEY rather than the flag, which other users of the machine can see.")
    ] = "",
    legacy: Annotated[
        bool, typer.Option(help="Also answer POST /generate, as the Model Garden container the codelab deployed "
                                "(vLLM's own image answers it 404).")
    ] = False,
) -> None:
    """Serve the local model as stand-ins for Gemma (vLLM APIs) and Gemini (its REST API)."""
    from hybridchat.backends.local import LocalModel, default_model_source
    from hybridchat.serve_local import serve

    settings = Settings()
    configure_logging(settings)
    host, port = host or settings.local_host, port or settings.local_port
    source = model or settings.local_model or default_model_source()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    url = f"http://{host}:{port}"
    typer.echo(f"Local stand-in for Gemma and Gemini: {url} (model: {source})")
    legacy_route = f"   legacy: {url}/generate" if legacy else ""
    typer.echo(f"  vLLM OpenAI API: {url}/v1{legacy_route}   Gemini: HYBRIDCHAT_GEMINI_URL={url}")
    if api_key:
        typer.echo("  Its /v1 routes want the API key (Authorization: Bearer), as vLLM's --api-key.")
    typer.echo("  Loading the model; like vLLM, it listens once loaded. Ctrl-C stops it.")
    loaded = LocalModel.load(source, token=token, max_model_len=max_model_len or None)
    serve(loaded, host, port, settings.log_level, served_model_name or None, api_key or None, legacy)


LearnerCodeOption = Annotated[
    Path | None,
    typer.Option(
        help="A learner's package folder (workspace/my_app): its translators and callers answer the models "
        "marked 'your code' (or HYBRIDCHAT_LEARNER_CODE).",
        exists=True, file_okay=False,
    ),
]


def _with_learner_code(settings: Settings, folder: Path | None) -> Settings:
    return settings.model_copy(update={"learner_code": str(folder.resolve())}) if folder else settings


@app.command("app")
def run_app(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 in a container.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    auth: Annotated[
        list[str], typer.Option(help="Require login: user:password (repeatable; shows in the process list).")
    ] = [],  # noqa: B006
    auth_file: Annotated[
        Path | None,
        typer.Option(help="Require login: a file of user:password lines (or HYBRIDCHAT_AUTH).", exists=True),
    ] = None,
    root_path: Annotated[str, typer.Option(help="Path prefix when served behind a proxy.")] = "",
    learner_code: LearnerCodeOption = None,
) -> None:
    """Run the chat app (Gradio UI, /healthz for probes)."""
    from hybridchat.app import create_app
    from hybridchat.server import serve

    settings = _with_learner_code(Settings(), learner_code)
    configure_logging(settings)
    web = create_app(settings, auth=_credentials(auth, auth_file, settings), root_path=root_path or None)
    typer.echo(f"hybridchat app: http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}{root_path}/")
    serve(web, host, port, settings)


@app.command("up")
def up(
    port: Annotated[int, typer.Option(help="The app's port.")] = 7860,
    learner_code: LearnerCodeOption = None,
) -> None:
    """Start the local stand-in and the app together (what `make run` runs); Ctrl-C stops both."""
    from hybridchat.lab.local import stop_process, wait_until_serving

    settings = Settings()
    stand_in = subprocess.Popen([sys.executable, "-m", "hybridchat.cli", "serve-local"])
    try:
        # The stand-in listens once its model has loaded: until then the app could only say
        # that Gemma and Gemini are not reachable.
        wait_until_serving(settings.local_url, stand_in)
        run_app(host="127.0.0.1", port=port, auth=[], auth_file=None, root_path="", learner_code=learner_code)
    finally:
        stop_process(stand_in)
        typer.echo(f"stopped the app and the stand-in on {settings.local_url}")


@app.command("ask")
def ask(
    message: str,
    model: Annotated[
        str, typer.Option(help="The model's name: gemma, gemini, my_gemma, my_gemini (default: the first).")
    ] = "",
    learner_code: LearnerCodeOption = None,
) -> None:
    """Send one message through the app's own path (its models, its store, a learner's code) and
    print who answered and the reply: in the app's pod, `kubectl exec deployment/gradio-chat --
    hybridchat ask "Hi" --model=my_gemma`. The turn is saved, as the owner cli:ask."""
    from hybridchat.backends import GenerationParams, build_backends
    from hybridchat.chat import ChatService, Conversation
    from hybridchat.store import open_store

    settings = _with_learner_code(Settings(), learner_code)
    configure_logging(settings)
    backends = build_backends(settings)
    name = model or next(iter(backends))
    params = GenerationParams(max_tokens=backends[name].default_max_tokens) if name in backends else GenerationParams()
    store = open_store(settings.resolved_store_url)
    try:
        *_, done = ChatService(backends, store, stream=False).respond(Conversation("cli:ask"), message, name, params)
    finally:
        store.close()
    assert done.turn is not None
    typer.echo(terminal_safe(f"{done.turn.model_label}: {done.turn.reply or done.turn.error}"))
    raise typer.Exit(0 if done.turn.status != "error" else 1)


@app.command("doctor")
def doctor() -> None:
    """Check each configured model and the history store; print what is reachable and why not."""
    from rich.console import Console
    from rich.table import Table

    from hybridchat.backends import build_backends
    from hybridchat.errors import HybridChatError
    from hybridchat.store import open_store

    settings = Settings()
    table = Table(title=f"hybridchat doctor (mode: {settings.mode})")
    for column in ("part", "name", "status", "detail"):
        table.add_column(column)
    healthy = True
    for backend in build_backends(settings).values():
        health = backend.health()
        healthy &= health.ok
        table.add_row(*_row("model", backend.label, "ok" if health.ok else "unavailable", health.detail))
    identity = _identity_row(settings)
    healthy &= identity[2].plain == "ok"
    table.add_row(*identity)
    url = settings.resolved_store_url  # shown redacted, as every cell is (_row)
    try:
        count = len(open_store(url, resilient=False).list_sessions(None))
        table.add_row(*_row("store", url, "ok", f"{count} session(s)"))
    except (HybridChatError, ValueError) as exc:
        healthy = False
        table.add_row(*_row("store", url, "unavailable", exc))
    Console().print(table)
    raise typer.Exit(0 if healthy else 1)


def _identity_row(settings: Settings) -> list[Text]:
    """Who visitors are; with sign-in through IAP, whether its keys can be read and the audience is set."""
    from hybridchat.errors import SignInRefused
    from hybridchat.iap import IapVerifier

    source = settings.identity_source
    if settings.identity != "iap":
        return _row("identity", source, "ok", "HYBRIDCHAT_IDENTITY=iap for Google sign-in (deployed behind IAP)")
    if not settings.iap_audience:
        return _row("identity", source, "not set up", "HYBRIDCHAT_IAP_AUDIENCE is empty: every request is refused")
    try:
        keys = IapVerifier(settings.iap_audience, settings.iap_keys_url).check_keys()
    except SignInRefused as exc:
        return _row("identity", source, "unavailable", exc)
    said = f"audience {settings.iap_audience}; {keys} IAP key(s) from {settings.iap_keys_url}"
    return _row("identity", source, "ok", said)


class ExportFormat(str, Enum):
    json = "json"
    md = "md"


def _store() -> HistoryStore:
    from hybridchat.store import open_store

    return open_store(Settings().resolved_store_url, resilient=False)


@sessions_app.command("list")
def sessions_list(
    user: Annotated[
        str | None, typer.Option(help="Only this owner's: an e-mail (signed in with Google), user:NAME or visitor:ID.")
    ] = None,
) -> None:
    """List saved sessions, newest first."""
    from rich.console import Console
    from rich.table import Table

    columns = ("session", "owner", "title", "updated", "turns")
    # E-mails as IAP signs them: lowercase.
    sessions = _store().list_sessions(user.lower() if user and "@" in user and ":" not in user else user)
    rows = [
        (s.session_id, s.user_id or "", s.title, f"{s.updated_at:%Y-%m-%d %H:%M}" if s.updated_at else "", s.turn_count)
        for s in sessions
    ]
    console = Console()
    if not console.is_terminal:  # piped: whole values, tab-separated, for `cut` and `sessions show`
        for row in (columns, *rows):
            typer.echo("\t".join(terminal_safe(str(cell)).replace("\t", "\\t").replace("\n", "\\n") for cell in row))
        return
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*_row(*row))
    console.print(table)


@sessions_app.command("show")
def sessions_show(session_id: str) -> None:
    """Print one session as a transcript."""
    typer.echo(terminal_safe(_markdown(session_id)))


@sessions_app.command("export")
def sessions_export(
    session_id: str,
    format: Annotated[ExportFormat, typer.Option("--format", help="json or md.")] = ExportFormat.json,
) -> None:
    """Write one session to standard output as JSON or Markdown."""
    if format is ExportFormat.md:
        typer.echo(terminal_safe(_markdown(session_id)))
        return
    store = _store()
    summary = store.get_session(session_id)
    turns = [turn.model_dump(mode="json") for turn in store.load(session_id)]
    typer.echo(json.dumps({"session": summary.model_dump(mode="json"), "turns": turns}, indent=2, ensure_ascii=False))


def _markdown(session_id: str) -> str:
    from hybridchat.transcript import markdown

    store = _store()
    return markdown(store.get_session(session_id), store.load(session_id))


def main() -> None:
    """The ``hybridchat`` command: hybridchat's own errors end it with their message, not a traceback."""
    from hybridchat.errors import HybridChatError

    try:
        app()
    except HybridChatError as exc:
        typer.echo(f"hybridchat: {terminal_safe(str(exc))}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
