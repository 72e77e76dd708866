"""What a reply cost, in US dollars: Gemini by its tokens, Gemma by the GPUs' hours.

Gemini is billed per million input and output tokens: ``GEMINI_PRICES``, list prices read on
``PRICES_READ`` from ``PRICES_PAGE`` (text, on-demand, prompts up to 200k tokens), each one
overridable with ``HYBRIDCHAT_GEMINI_PRICES``. Gemma is billed by the hour its GPUs run, used or
not: a reply's share is the GPUs' price per hour for the time the server spent on it (its tokens
over the throughput measured on that server, which is how long the reply took), divided by the
people sharing the server (``HYBRIDCHAT_ROOM_SIZE``). That is an estimate, and said to be one: a
server batches replies, so a busy one costs less per reply than this. The small local model costs
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridchat.config import Settings

# Read from copies of the page published in 2026 (this machine cannot reach it): check it before the day.
PRICES_READ = "2026-12-07"
PRICES_PAGE = "https://cloud.google.com/vertex-ai/generative-ai/pricing"
GPU_PRICES_PAGE = "https://cloud.google.com/compute/gpus-pricing"

# US dollars per million tokens: (input, output).
GEMINI_PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.15, 0.60),
    "gemini-2.0-flash-lite": (0.075, 0.30),
}
# US dollars per GPU and hour, on demand in us-central1 (GKE Autopilot adds the pod's vCPU and memory).
GPU_PRICES: dict[str, float] = {"nvidia-l4": 0.56}
# How many GPUs of which kind each Gemma manifest in deploy/ asks for.
GEMMA_GPUS = {"gemma-3-12b": ("nvidia-l4", 2), "gemma-4-e4b": ("nvidia-l4", 1)}

GEMMA_FAMILY = ("gemma", "my_gemma")  # the backends a Gemma server answers, by the hour
LOCAL = "local"


@dataclass(frozen=True)
class Pricing:
    """The prices in force: what ``cost`` charges each backend's replies."""

    gemini_model: str
    gemini_prices: dict[str, tuple[float, float]]
    gemma_hourly_usd: float  # all of the Gemma server's GPUs together
    room_size: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        kind, count = GEMMA_GPUS[settings.gemma_deployment]
        gpu_prices = GPU_PRICES | settings.gpu_prices
        return cls(
            gemini_model=settings.gemini_model,
            gemini_prices=GEMINI_PRICES | settings.gemini_prices,
            gemma_hourly_usd=gpu_prices[kind] * count,
            room_size=settings.room_size,
        )

    def cost(self, backend: str, prompt_tokens: int | None, completion_tokens: int | None,
             seconds: float) -> float | None:
        """A reply's cost in US dollars; ``None`` where no price is known."""
        if backend == LOCAL:
            return 0.0
        if backend in GEMMA_FAMILY:
            return self.gemma_hourly_usd * seconds / 3600 / max(self.room_size, 1)
        price = self.gemini_prices.get(self.gemini_model)
        if price is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def is_estimate(backend: str) -> bool:
    """Whether a backend's cost is an estimate (a share of GPU hours), not a price list's."""
    return backend in GEMMA_FAMILY


def shown(cost: float) -> str:
    """``$0.0003``: two significant digits, never an exponent."""
    if cost == 0:
        return "$0"
    digits = max(2, 1 - int(f"{cost:e}".split("e")[1]))
    return f"${cost:.{digits}f}".rstrip("0").rstrip(".") if cost < 1 else f"${cost:.2f}"
