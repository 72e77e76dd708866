"""``hybridchat room``: an instructor's commands for a room of attendees' projects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
