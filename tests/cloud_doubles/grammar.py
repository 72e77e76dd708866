"""The command-line grammar the doubles check: each command the workshop runs, its flags (True:
takes a value) and positionals, refused with the real tool's message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class Refused(Exception):
    """The command line is not one the real tool takes: ``message`` on stderr, ``status`` out."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status




@dataclass(frozen=True)
class Spec:
    flags: dict[str, bool]
    positionals: tuple[int, int | None]  # at least, at most (None: any number)
    run: Callable[[Call], str]


@dataclass
class Call:
    tool: str
    path: tuple[str, ...]
    flags: dict[str, str | bool] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    cwd: Path = field(default_factory=Path.cwd)

    def flag(self, name: str) -> str:
        value = self.flags.get(name)
        return value if isinstance(value, str) else ""


def parse(tool: str, argv: list[str], specs: dict[tuple[str, ...], Spec]) -> tuple[Call, Spec]:
    """Split ``argv`` into the command's path, its flags and positionals, as ``tool`` would."""
    words = [a for a in argv if not a.startswith("-")]
    if argv == ["--version"]:
        words = argv
    path = max((p for p in specs if tuple(words[: len(p)]) == p), key=len, default=None)
    if path is None:
        raise Refused(_unknown_command(tool, words[0] if words else ""), 2 if tool == "gcloud" else 1)
    spec = specs[path]
    call, rest, consumed = Call(tool, path, argv=list(argv)), list(argv), 0
    if argv == ["--version"]:
        return call, spec
    while tool == "terraform" and rest and rest[0].startswith("-chdir="):  # a global option: first only
        call.flags["-chdir"] = rest.pop(0).partition("=")[2]
    while rest:
        arg = rest.pop(0)
        if arg == "--" and tool == "kubectl":  # `kubectl exec POD -- COMMAND…`: the rest is the command's
            call.args += rest
            break
        if arg.startswith("-") and arg != "-":
            name, has_value, value = arg.partition("=")
            if name not in spec.flags:
                raise Refused(_unknown_flag(tool, path, arg), 2 if tool == "gcloud" else 1)
            if spec.flags[name] and not has_value:
                if not rest:
                    raise Refused(_missing_value(tool, path, name), 2 if tool == "gcloud" else 1)
                value = rest.pop(0)
            call.flags[name] = value if spec.flags[name] else True
        elif consumed < len(path):
            consumed += 1
        else:
            call.args.append(arg)
    low, high = spec.positionals
    if len(call.args) < low or (high is not None and len(call.args) > high):
        raise Refused(_arguments(tool, path, call.args, low, high), 2 if tool == "gcloud" else 1)
    return call, spec


def _unknown_command(tool: str, word: str) -> str:
    return {
        "gcloud": f"ERROR: (gcloud) Invalid choice: '{word}'.\n\nTo search the help text of gcloud commands, run:\n  gcloud help -- SEARCH_TERMS",
        "kubectl": f'Error: unknown command "{word}" for "kubectl"',
        "terraform": f'Terraform has no command named "{word}".\n\nTo see all of Terraform\'s top-level commands, run:\n  terraform -help',
        "skaffold": f'Error: unknown command "{word}" for "skaffold"\nRun \'skaffold --help\' for usage.',
        "gke-gcloud-auth-plugin": f"unknown flag: {word}",
    }[tool]


def _unknown_flag(tool: str, path: tuple[str, ...], arg: str) -> str:
    return {
        "gcloud": f"ERROR: (gcloud.{'.'.join(path)}) unrecognized arguments: {arg} \n\nTo search the help text of gcloud commands, run:\n  gcloud help -- SEARCH_TERMS",
        "kubectl": f"Error: unknown flag: {arg.partition('=')[0]}\nSee 'kubectl {' '.join(path)} --help' for usage.",
        "terraform": f"╷\n│ Error: Failed to parse command-line flags\n│ \n│ flag provided but not defined: {arg.partition('=')[0]}\n╵\n\nFor more help on using this command, run:\n  terraform {' '.join(path)} -help",
        "skaffold": f"Error: unknown flag: {arg.partition('=')[0]}",
        "gke-gcloud-auth-plugin": f"unknown flag: {arg}",
    }[tool]


def _missing_value(tool: str, path: tuple[str, ...], name: str) -> str:
    if tool == "gcloud":
        return f"ERROR: (gcloud.{'.'.join(path)}) argument {name}: expected one argument"
    return f"Error: flag needs an argument: {name}"


def _arguments(tool: str, path: tuple[str, ...], args: list[str], low: int, high: int | None) -> str:
    if tool == "gcloud":
        if len(args) < low:
            return f"ERROR: (gcloud.{'.'.join(path)}) argument: Must be specified."
        return f"ERROR: (gcloud.{'.'.join(path)}) unrecognized arguments: {' '.join(args[high:])} "
    if tool == "kubectl" and path == ("port-forward",):
        return "error: TYPE/NAME and list of ports are required for port-forward\nSee 'kubectl port-forward -h' for help and examples"
    return f"Error: accepts between {low} and {high} arg(s), received {len(args)}"

