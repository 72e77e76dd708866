"""The workshop's commands: ``hybridchat lab`` for a learner's workspace, and ``hybridchat room``
for an instructor's room of attendees' projects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

CLOUD_SHELL_PORT = 8080  # Web Preview's default port

room_app = typer.Typer(help="An instructor's commands for a room of attendees' projects.", no_args_is_help=True)


def read_projects(path: Path) -> list[str]:
    """One project id per line; blank lines and ``#`` comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@room_app.command("leftovers")
def leftovers(
    projects: Annotated[Path, typer.Option(help="A file with one project id per line (# comments).",
                                           exists=True, dir_okay=False)],
    region: Annotated[str, typer.Option(help="The workshop's region.")] = "us-central1",
) -> None:
    """What still bills in each project after the workshop (notebook 07's check); exit 1 if anything does."""
    from hybridchat.lab import leftovers as check

    names = read_projects(projects)
    if not names:
        typer.echo(f"{projects} lists no project: one project id per line.", err=True)
        raise typer.Exit(2)
    unclean = []
    for project in names:
        typer.echo(f"== {project}")
        if not check.report(project, region):
            unclean.append(project)
    typer.echo(f"\n{len(names) - len(unclean)} of {len(names)} projects clean" +
               (f"; still billing or not listed: {', '.join(unclean)}" if unclean else ""))
    raise typer.Exit(1 if unclean else 0)


@room_app.command("results")
def results(
    projects: Annotated[Path | None, typer.Option(help="A file with one project id per line (# comments): each "
                                                       "attendee's Firestore, chat-app-db.", exists=True,
                                                       dir_okay=False)] = None,
    store: Annotated[list[str] | None, typer.Option(help="A history store's URL (sqlite:///PATH, firestore://DB?"
                                                         "project=P), instead of or beside --projects.")] = None,
    sessions: Annotated[int, typer.Option(help="The newest sessions read from each store.")] = 1000,
) -> None:
    """Which model the room's chats favour: each model's speed, cost and thumbs, and the side-by-side
    picks' win rates with their 95% interval (notebook 06's analysis). Reads numbers only, never a
    prompt or a reply; exit 1 if a store could not be read."""
    import pandas as pd
    from google.api_core.exceptions import GoogleAPICallError

    from hybridchat import comparison
    from hybridchat.errors import StoreError
    from hybridchat.store import open_store

    urls = [f"firestore://chat-app-db?project={project}" for project in read_projects(projects)] if projects else []
    urls += store or []
    if not urls:
        typer.echo("Name the room's stores: --projects FILE (one project id per line) or --store URL.", err=True)
        raise typer.Exit(2)
    frames, unread = [], []
    for url in urls:
        try:
            opened = open_store(url, resilient=False)
            try:
                frame = comparison.read_turns(opened, sessions)
            finally:
                opened.close()
        except (StoreError, GoogleAPICallError, ValueError) as failed:
            typer.echo(f"== {url}: could not read it: {failed}")
            unread.append(url)
            continue
        typer.echo(f"== {url}: {len(frame)} turns, {len(comparison.duels(frame))} picks")
        frames.append(frame)
    room = pd.concat(frames, ignore_index=True) if frames else comparison.turns_frame([])
    picks = comparison.duels(room)
    rates = comparison.win_rates(picks)
    typer.echo(f"\nOver {len(frames)} of {len(urls)} stores: {len(room)} turns, {len(picks)} picks.\n")
    with pd.option_context("display.width", 120, "display.max_columns", None):
        typer.echo(f"Per model (whole replies; medians; cost of 1,000 turns in USD):\n{comparison.per_model(room)}\n")
        if not picks.empty:
            typer.echo(f"Side-by-side picks (win rate of model against the other, 95% interval):\n"
                       f"{rates}\n")
            if len({*picks.winner, *picks.loser}) > 2:
                typer.echo(f"All models on one scale (Bradley-Terry):\n{comparison.strengths(picks)}\n")
    typer.echo(comparison.verdict(rates, "gemma", "gemini"))
    raise typer.Exit(1 if unread else 0)


@room_app.command("rehearse")
def rehearse(
    url: Annotated[str, typer.Option(help="The room's Gemma (https://…), as attendees set GEMMA_URL.")],
    chats: Annotated[int, typer.Option(min=1, max=1000, help="Attendees chatting at once.")] = 30,
    turns: Annotated[int, typer.Option(min=1, max=100, help="Turns in each attendee's conversation.")] = 8,
    think: Annotated[float, typer.Option(min=0, help="Seconds an attendee reads and types between turns (on "
                                                     "average).")] = 10.0,
    max_tokens: Annotated[int, typer.Option(min=1, max=8192, help="Tokens a reply may have.")] = 256,
    ttft_goal: Annotated[float, typer.Option(help="Seconds to first token the p95 must stay under.")] = 2.0,
    queue_limit: Annotated[int, typer.Option(help="Requests waiting in vLLM's queue that are still fine.")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the record (every turn) here.")] = None,
) -> None:
    """Drive the room's Gemma as a room would (key: HYBRIDCHAT_VLLM_API_KEY), then say whether it
    holds: time to first token, time per output token, errors, vLLM's queue and prefix cache."""
    from rich.console import Console
    from rich.progress import Progress

    from hybridchat import rehearse as rehearsal
    from hybridchat.config import Settings

    settings = Settings()
    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    try:
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(f"{chats} chats × {turns} turns", total=chats * turns)
            measured = rehearsal.rehearse(url, key, chats=chats, turns=turns, think_s=think, max_tokens=max_tokens,
                                          on_turn=lambda: bar.advance(task))
    except rehearsal.Unusable as unusable:
        typer.echo(f"hybridchat room rehearse: {unusable}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"The room's Gemma at {measured.url}, serving {measured.model}:")
    rows = measured.table()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"  {name:<{width}}  {value}")
    holds, verdict = measured.verdict(ttft_goal, queue_limit)
    typer.echo(verdict)
    if json_out:
        import json

        json_out.write_text(json.dumps(measured.record(ttft_goal, queue_limit), indent=1) + "\n")
    raise typer.Exit(0 if holds else 1)


@room_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 in a container.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8090,
    store: Annotated[str, typer.Option(help="Where the board is kept: sqlite:///PATH or firestore://DATABASE.")] = (
        "sqlite:///~/.hybridchat/room-progress.db"
    ),
    gemma_url: Annotated[str, typer.Option(help="The room's Gemma, whose load the page shows (default: "
                                                "HYBRIDCHAT_VLLM_URL).", show_default=False)] = "",
) -> None:
    """The room's progress service: attendees' checker cells POST /progress their verdicts (with
    the key HYBRIDCHAT_VLLM_API_KEY); the page at / shows them, to HYBRIDCHAT_ROOM_INSTRUCTOR_KEY."""
    from hybridchat.config import Settings
    from hybridchat.errors import StoreUnavailable
    from hybridchat.redact import configure_logging
    from hybridchat.room_service import Room, create_app
    from hybridchat.server import serve as serve_web
    from hybridchat.store.progress import open_progress

    settings = Settings()
    configure_logging(settings)
    attendees = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else ""
    instructor = settings.room_instructor_key.get_secret_value() if settings.room_instructor_key else ""
    if not attendees or not instructor or attendees == instructor:
        typer.echo("hybridchat room serve needs two keys: HYBRIDCHAT_VLLM_API_KEY, the attendees' (the room's Gemma "
                   "key), and HYBRIDCHAT_ROOM_INSTRUCTOR_KEY, another one, for the page.", err=True)
        raise typer.Exit(2)
    try:
        board = open_progress(store)
    except (ValueError, StoreUnavailable) as cannot:
        typer.echo(f"hybridchat room serve: {cannot}", err=True)
        raise typer.Exit(2) from None
    room = Room(board, attendees, instructor, gemma_url or settings.vllm_url)
    typer.echo(f"hybridchat room serve: http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ "
               "(sign in with the instructor's key); attendees post to /progress")
    try:
        serve_web(create_app(room), host, port, settings)
    finally:
        board.close()


def lab(
    workspace: Annotated[
        Path | None, typer.Option(help="Where the learner's copies live (default: workspace/, git-ignored).")
    ] = None,
    ip: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 to reach it from outside a container.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option(help="JupyterLab's port (default 8888; 8080 in Cloud Shell).", show_default=False)
    ] = 0,
    browser: Annotated[bool, typer.Option(help="Open a browser tab (never in Cloud Shell).")] = True,
    cloud_shell: Annotated[
        bool, typer.Option(help="Serve for Cloud Shell's Web Preview (default: on in Cloud Shell, CLOUD_SHELL=true).")
    ] = os.environ.get("CLOUD_SHELL") == "true",
    solutions: Annotated[
        bool, typer.Option(help="Put the solutions into my_app/ and infra/ (your files are backed up), and stop.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --solutions: do not ask first.")] = False,
    reset: Annotated[
        str, typer.Option(help="Put this notebook (05, or its file name) back as given; yours is backed up. Then stop.")
    ] = "",
) -> None:
    """Copy the workshop's notebooks and your package, my_app, into your workspace (once: your
    copies are never replaced) and open JupyterLab there."""
    from hybridchat.lab.workspace import WORKSPACE, jupyter_lab_argv, prepare, put_solutions
    from hybridchat.lab.workspace import reset as reset_notebook

    workspace = (workspace or WORKSPACE).resolve()
    if reset:
        try:
            kept_in = reset_notebook(workspace, reset)
        except ValueError as unknown:
            typer.echo(f"hybridchat: {unknown}", err=True)
            raise typer.Exit(2) from None
        yours = f"; yours is in {kept_in}" if kept_in else ""
        typer.echo(f"{reset}: put back as the workshop gives it{yours}.\nIf it is open in JupyterLab, choose "
                   "File > Reload Notebook from Disk there before anything else: saving the open tab would write "
                   "your old copy back (JupyterLab then asks: Revert takes the reset one, Overwrite keeps yours).")
        return
    prepared = prepare(workspace)
    for path in prepared.copied:
        typer.echo(f"copied   {path.relative_to(workspace)}")
    for path in prepared.kept:
        typer.echo(f"yours    {path.relative_to(workspace)} (kept as it is)")
    typer.echo(f"Your workspace: {workspace}. The notebooks in notebooks/ stay the workshop's; solutions/ "
               "holds the solutions, read-only, to open when a hint has not got you further.")
    if solutions:
        asked = f"Replace your translators, callers (my_app/) and Terraform (infra/) in {workspace} with the solutions?"
        if not yes and not typer.confirm(asked):
            raise typer.Exit(1)
        backup = put_solutions(workspace)
        typer.echo("The solutions are in my_app/ and infra/." + (f" Your files are in {backup}." if backup else ""))
        typer.echo("Notebooks 03 and 04's %%write_module cells, once your code is in them, write it over "
                   "my_app/ again (the solutions then kept in a backup); while they hold their TODOs, they keep these.")
        return
    port = port or (CLOUD_SHELL_PORT if cloud_shell else 8888)
    if cloud_shell:
        preview = "'Preview on port 8080'" if port == CLOUD_SHELL_PORT else f"'Change port' to {port}"
        typer.echo(f"Cloud Shell: open Web Preview (the eye icon above the terminal), {preview}; JupyterLab then "
                   "asks for its token: the part after token= in the URL it prints below.")
    argv = jupyter_lab_argv(workspace, ip=ip, port=port, open_browser=browser and not cloud_shell,
                            behind_proxy=cloud_shell)
    # JupyterLab's terminals open in its working directory ("" resolves there before root_dir).
    os.chdir(workspace)
    os.execv(argv[0], argv)  # JupyterLab takes this process over: Ctrl-C stops it
