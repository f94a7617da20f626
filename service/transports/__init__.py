"""Channels between the dispatcher and its workers, one implementation per mechanism."""

from __future__ import annotations

from service.transports.base import (
    ParentChannel,
    Transport,
    TransportBroken,
    TransportClosed,
    WorkerChannel,
    WorkerEndpoint,
)

__all__ = [
    "ParentChannel",
    "Transport",
    "TransportBroken",
    "TransportClosed",
    "WorkerChannel",
    "WorkerEndpoint",
    "get_transport",
]


def get_transport(name: str) -> Transport:
    """Return the transport called ``name``.

    Raises:
        ValueError: no transport has that name.
    """
    if name == "pipe":
        from service.transports.pipe import PipeTransport  # noqa: PLC0415

        return PipeTransport()
    raise ValueError(f"unknown transport {name!r}; expected 'pipe'")
