"""``skaffold run``: the image's context by Docker's rules, and the app started from it."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml

from .grammar import Call, Refused, Spec
from .kubectl import kubectl_specs
from .pods import deploy
from .state import ROOT, State


def skaffold_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def version(call: Call) -> str:
        return "v2.16.1\n"

    def run(call: Call) -> str:
        config = call.cwd / "skaffold.yaml"
        if not config.exists():
            raise Refused("skaffold.yaml not found - check your current working directory, or try running `skaffold init`")
        if not state["kube_context"]:
            raise Refused("getting current cluster context: no current context set")
        repo = call.flag("--default-repo")
        skaffold = yaml.safe_load(config.read_text())
        artifact = skaffold["build"]["artifacts"][0]
        context = call.cwd / artifact["context"]
        state["image"] = _build(context, context / artifact["docker"]["dockerfile"], state.folder / "image")
        manifests = [ROOT / path for path in skaffold["manifests"]["rawYaml"]]
        lines = ["Generating tags...", f" - gradio-chat-app -> {repo}/gradio-chat-app:latest", "Checking cache...",
                 " - gradio-chat-app: Not found. Building", "Starting build...", "Building [gradio-chat-app]...",
                 "Build [gradio-chat-app] succeeded", "Starting deploy..."]
        for manifest in manifests:
            lines.append(" - " + kubectl_specs(state)[("apply",)].run(Call("kubectl", ("apply",), {"-f": str(manifest)})).strip().replace("\n", "\n - "))
        deploy(state)
        lines += ["Waiting for deployments to stabilize...", " - deployment/gradio-chat-deployment is ready.",
                  "Deployments stabilized in 3.2 seconds"]
        return "\n".join(lines) + "\n"

    return {
        ("--version",): Spec({"--version": False}, (0, 0), version),
        ("run",): Spec({"--default-repo": True}, (0, 0), run),
    }


def _build(context: Path, dockerfile: Path, image: Path) -> dict[str, str]:
    """The image as Cloud Build makes it from ``context``: the files Docker's own `.dockerignore`
    rules send (docker-py's), each `COPY` source found among them, as the build would fail
    otherwise. Returns each path the runtime stage copies into, and where its files are here."""
    from docker.utils.build import exclude_paths

    patterns = (context / ".dockerignore").read_text().splitlines()
    shutil.rmtree(image, ignore_errors=True)
    for path in exclude_paths(str(context), patterns, dockerfile=str(dockerfile.relative_to(context))):
        if (context / path).is_file():
            (image / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / path, image / path)
    stages = re.split(r"^FROM ", dockerfile.read_text().replace("\\\n", " "), flags=re.MULTILINE)
    copied = {}
    for stage in stages[1:]:
        for line in re.findall(r"^COPY (?!--from)(.+)$", stage, re.MULTILINE):
            *sources, target = shlex.split(line)
            for source in sources:
                if not (image / source).exists():
                    raise Refused(f"Step #0: COPY failed: file not found in build context or excluded by .dockerignore: "
                                  f"stat {source}: file does not exist\nERROR: build step 0 \"gcr.io/cloud-builders/docker\" failed")
            if stage is stages[-1] and len(sources) == 1:
                copied[target] = str(image / sources[0])
    return copied
