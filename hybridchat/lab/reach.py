"""How a notebook reaches the models: locally the stand-in; in gcp mode the room's Gemma
(``GEMMA_URL``) or the attendee's own through a port-forward, once its pod is Ready. When Gemma
cannot be reached (its pod not Ready yet, or ``GEMMA_URL = "none"``), the notebook runs its Gemini
parts alone and says what it left out and why, instead of stopping at its first cell."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hybridchat.config import Settings
from hybridchat.lab import gcp, local
from hybridchat.lab.shell import Background, run
from hybridchat.lab.workshop import NO_GEMMA


@dataclass(frozen=True)
class Reached:
    """The settings that reach the models from this notebook; ``gemma_left_out`` says why Gemma
    is not among them, when it is not."""

    settings: Settings
    gemma_left_out: str | None = None
    forward: Background | None = None
    started_stand_in: bool = False  # not up before this notebook: it stops it at its end

    @property
    def gemma(self) -> bool:
        return self.gemma_left_out is None

    def skipped(self, what: str) -> None:
        """Say that ``what`` (a Gemma part of the notebook) did not run, and why."""
        print(f"⏭ {what}: skipped, {self.gemma_left_out}.")

    def stop(self) -> None:
        """Stop what this notebook started: the port-forward, or the stand-in it found stopped
        (the one notebook 02 started is left for the next notebooks, until 07)."""
        if self.forward is not None:
            self.forward.stop()
        if self.started_stand_in and local.stop_local_servers():
            print("stopped the local stand-in this notebook started")


def models(mode: str, gemma_url: str, settings: Settings) -> Reached:
    """Reach the models for a notebook in ``mode``, as ``setup.configure`` set ``settings`` up."""
    started = mode == "local" and not local.serving(settings.local_url)
    if mode == "local":
        local.start_stand_in(settings)
    if gemma_url == NO_GEMMA:
        return replace(_without_gemma(settings, 'GEMMA_URL is "none": this workshop runs on Gemini alone'),
                       started_stand_in=started)
    if mode == "local" or gemma_url:
        return Reached(settings, started_stand_in=started)
    phase, detail = gcp.pod_status(run(gcp.gemma_pods(), echo=False))
    if phase != "Ready":
        return _without_gemma(settings, f"Gemma's pod is not Ready ({phase}: {detail}); run this notebook again "
                                        "once notebook 02 says it is")
    forward = gcp.forward_gemma()  # gemma-service:8000 answers only inside the cluster
    return Reached(settings.model_copy(update={"vllm_url": forward.url}), forward=forward)


def _without_gemma(settings: Settings, why: str) -> Reached:
    print(f"⚠️ Gemma is left out of this notebook: {why}. Its Gemini parts run.")
    offered = [name for name in settings.backends if name != "gemma"]
    return Reached(settings.model_copy(update={"backends": offered}), gemma_left_out=why)
