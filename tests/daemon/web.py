"""HTTP helpers for the tests of the daemon's metrics and status page (loopback only).

``fetch`` makes one request
with ``http.client`` and returns status, headers and body; ``scrape`` reads a
Prometheus exposition into ``{(name, labels): value}``.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

HTTP_TIMEOUT = 10.0

Sample = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def fetch(
    port: int,
    path: str = "/",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    """One request to ``127.0.0.1:port``; header names in the result are lower case."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        reply = conn.getresponse()
        data = reply.read()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
    finally:
        conn.close()


def scrape(port: int) -> dict[Sample, float]:
    """GET /metrics and parse it: ``{(sample name, frozenset(labels)): value}``."""
    reply = fetch(port, "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def sample(samples: Mapping[Sample, float], name: str, **labels: str) -> float | None:
    """The value of ``name{labels}`` in a scrape, or None if it has no such sample."""
    return samples.get((name, frozenset(labels.items())))
