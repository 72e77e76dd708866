"""What a vLLM server says of its load on ``/metrics`` (Prometheus text, read with
prometheus_client's parser): requests running and waiting, the KV cache's use, and the prefix
cache's counters. ``room rehearse``, the room's progress page and Auto read it; ``Exported``
serves the same names from our stand-ins.

>>> load = parse('vllm:num_requests_waiting{engine="0",model_name="g"} 3.0\\n'
...              'vllm:prefix_cache_queries_total{engine="0",model_name="g"} 200.0\\n'
...              'vllm:prefix_cache_hits_total{engine="0",model_name="g"} 150.0\\n')
>>> load.waiting, load.hit_rate_since(None)
(3.0, 0.75)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"  # a fraction, despite its name
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
NAMES = (WAITING, RUNNING, KV_CACHE, PREFIX_HITS, PREFIX_QUERIES)


@dataclass(frozen=True)
class Load:
    """One reading of the server's gauges and counters (each summed over its engines)."""

    waiting: float
    running: float
    kv_cache: float | None
    prefix_hits: float
    prefix_queries: float

    def hit_rate_since(self, earlier: Load | None) -> float | None:
        """The share of prompt tokens found in the prefix cache since ``earlier`` (since the
        server started for ``None``); ``None`` when no prompt was looked up."""
        hits = self.prefix_hits - (earlier.prefix_hits if earlier else 0)
        queries = self.prefix_queries - (earlier.prefix_queries if earlier else 0)
        return hits / queries if queries > 0 else None

    def line(self) -> str:
        """The load in a few words, for a page's header."""
        cache = f", KV cache {self.kv_cache:.0%} full" if self.kv_cache is not None else ""
        return f"{self.running:.0f} replies being written, {self.waiting:.0f} waiting{cache}"


class NotVllmMetrics(ValueError):
    """The text is not Prometheus text with vLLM's gauges."""


def parse(text: str) -> Load:
    """The load in ``text`` (``/metrics``); ``NotVllmMetrics`` without vLLM's queue gauge."""
    sums: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in NAMES:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except ValueError as exc:
        raise NotVllmMetrics(f"not Prometheus text ({exc})") from None
    if WAITING not in sums:
        raise NotVllmMetrics(f"no {WAITING} in it")
    return Load(sums[WAITING], sums.get(RUNNING, 0.0), sums.get(KV_CACHE), sums.get(PREFIX_HITS, 0.0),
                sums.get(PREFIX_QUERIES, 0.0))


def read(base_url: str, *, timeout: float = 3.0, http: httpx.Client | None = None) -> Load | None:
    """The server's load now; ``None`` when it serves no vLLM ``/metrics`` (another server, a
    proxy that does not route the path, a server that is down)."""
    try:
        answer = (http or httpx).get(f"{base_url.rstrip('/')}/metrics", timeout=timeout)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    try:
        return parse(answer.text)
    except NotVllmMetrics:
        return None


class Exported(Collector):
    """A stand-in's load on its ``/metrics`` in vLLM's names, types and labels (a test holds them
    to the real engine's): set ``waiting`` and ``running``; it has no prefix cache (counters 0)."""

    def __init__(self, model_name: str):
        self.labels = {"engine": "0", "model_name": model_name}
        self.waiting = self.running = 0
        self.kv_cache = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        gauges = ((WAITING, "Requests waiting to be processed.", self.waiting),
                  (RUNNING, "Requests in model execution batches.", self.running),
                  (KV_CACHE, "KV-cache usage. 1 means 100 percent usage.", self.kv_cache))
        for name, about, value in gauges:
            gauge = GaugeMetricFamily(name, about, labels=list(self.labels))
            gauge.add_metric(list(self.labels.values()), value)
            yield gauge
        for name, about in ((PREFIX_QUERIES, "Prefix cache queries, in terms of tokens."),
                            (PREFIX_HITS, "Prefix cache hits, in terms of tokens.")):
            counter = CounterMetricFamily(name.removesuffix("_total"), about, labels=list(self.labels))
            counter.add_metric(list(self.labels.values()), 0.0)
            yield counter

    def text(self) -> bytes:
        """The Prometheus text ``/metrics`` answers."""
        return generate_latest(self.registry)
