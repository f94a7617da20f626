"""Channels between the dispatcher and its workers, one implementation per mechanism."""

from __future__ import annotations

from typing import Literal, get_args

from pipework.service.transports.base import (
    ParentChannel,
    Transport,
    TransportBroken,
    TransportClosed,
    WorkerChannel,
    WorkerEndpoint,
)

TransportName = Literal["pipe", "queue", "zmq", "zmq+tcp"]
"""A transport by name: ``zmq`` is ZeroMQ over ``ipc://``, ``zmq+tcp`` over loopback TCP."""

NAMES: tuple[TransportName, ...] = get_args(TransportName)
"""The transports ``WorkerService(transport=...)`` accepts by name."""

__all__ = [
    "NAMES",
    "ParentChannel",
    "Transport",
    "TransportBroken",
    "TransportClosed",
    "TransportName",
    "WorkerChannel",
    "WorkerEndpoint",
    "get_transport",
]


def get_transport(spec: str | Transport) -> Transport:
    """Return the transport named by ``spec``, or ``spec`` itself if it is one.

    Names: ``"pipe"``, ``"queue"``, ``"zmq"`` (``ipc://``), ``"zmq+tcp"`` (``tcp://`` on loopback).

    Raises:
        ValueError: no transport has that name.
    """
    if not isinstance(spec, str):
        return spec
    if spec == "pipe":
        from pipework.service.transports.pipe import PipeTransport  # noqa: PLC0415

        return PipeTransport()
    if spec == "queue":
        from pipework.service.transports.queue import QueueTransport  # noqa: PLC0415

        return QueueTransport()
    if spec in ("zmq", "zmq+tcp"):
        # Imported here so that pyzmq loads only for the pools that use it.
        from pipework.service.transports.zmq import ZmqTransport  # noqa: PLC0415

        return ZmqTransport("tcp" if spec == "zmq+tcp" else "ipc")
    raise ValueError(f"unknown transport {spec!r}; expected one of {', '.join(NAMES)}")
