"""The repository's Terraform and manifests as data, for the tests that hold them to each other."""

from __future__ import annotations

from pathlib import Path

import yaml

from hybridchat.lab.terraform import parse

ROOT = Path(__file__).resolve().parents[1]
INFRA, DEPLOY = ROOT / "infra", ROOT / "deploy"


def terraform() -> dict:
    merged: dict = {}
    for path in sorted(INFRA.glob("*.tf")):
        for key, blocks in parse(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def resource(kind: str, name: str) -> dict:
    found = [block[kind][name] for block in terraform()["resource"] if kind in block and name in block[kind]]
    assert len(found) == 1, f"{kind}.{name} should be defined once"
    return found[0]


def variables() -> dict:
    return {name: body for block in terraform()["variable"] for name, body in block.items()}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str, name: str, path: Path = DEPLOY / "chat-deploy.yaml") -> dict:
    found = [d for d in documents(path) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} should be in {path.name} once"
    return found[0]

