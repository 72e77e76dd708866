"""The ``hybridchat`` command line."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from hybridchat.config import Settings

app = typer.Typer(help="hybridchat: a hybrid Gemma + Gemini chat app for workshops.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """hybridchat: a hybrid Gemma + Gemini chat app for workshops."""


@app.command("serve-local")
def serve_local(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "",
    port: Annotated[int, typer.Option(help="Port (default HYBRIDCHAT_LOCAL_PORT, 8000).")] = 0,
    model: Annotated[
        str, typer.Option(help="Hub id, model directory or .gguf file (default HYBRIDCHAT_LOCAL_MODEL).")
    ] = "",
) -> None:
    """Serve the local model as stand-ins for Gemma (vLLM APIs) and Gemini (its REST API)."""
    from hybridchat.backends.local import LocalModel, default_model_source
    from hybridchat.serve_local import serve

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = host or settings.local_host, port or settings.local_port
    source = model or settings.local_model or default_model_source()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    url = f"http://{host}:{port}"
    typer.echo(f"Local stand-in for Gemma and Gemini: {url} (model: {source})")
    typer.echo(f"  vLLM OpenAI API: {url}/v1   legacy: {url}/generate   Gemini: HYBRIDCHAT_GEMINI_URL={url}")
    typer.echo("  Answers 503 until the model has loaded; Ctrl-C stops it.")
    serve(lambda: LocalModel.load(source, token=token), host, port, settings.log_level)


if __name__ == "__main__":
    app()
