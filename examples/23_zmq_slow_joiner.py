"""ZeroMQ PUB/SUB slow joiner: a subscriber misses whatever was published before it joined.

PUB sends each message to the subscribers connected and subscribed at that
moment and drops it for everyone else, without an error. Connecting and
subscribing take a little time, so a subscriber started "at the same time"
as the publisher misses the first messages.

The fix shown: an XPUB socket receives each subscription as a message, so
the publisher waits until the subscriber is there before publishing.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from multiprocessing.connection import Connection

import zmq

MESSAGES = 200


def subscriber(address: str, report: Connection) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(address)
    sub.subscribe(b"")
    received = []
    try:
        while sub.poll(5000):
            message = sub.recv_string()
            if message == "end":
                break
            received.append(int(message))
    finally:
        ctx.destroy(linger=0)
    report.send(received)


def publish(kind: int, address: str) -> list[int]:
    reader, writer = mp.Pipe(duplex=False)
    p = mp.Process(target=subscriber, args=(address, writer))
    p.start()
    writer.close()
    ctx = zmq.Context()
    pub = ctx.socket(kind)
    pub.bind(address)
    if kind == zmq.XPUB:
        if not pub.poll(5000):
            raise SystemExit("no subscriber within 5 s")
        print(f"XPUB: subscription received ({pub.recv()!r}), publishing now")
    for n in range(MESSAGES):
        pub.send_string(str(n))
        time.sleep(0.002)
    pub.send_string("end")
    received: list[int] = reader.recv() if reader.poll(10) else []
    p.join(timeout=10)
    ctx.destroy(linger=0)
    return received


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="zmq-pubsub-") as private:
        got = publish(zmq.PUB, f"ipc://{private}/pub")
        lost = got[0] if got else MESSAGES
        print(f"PUB at once: received {len(got)} of {MESSAGES}; the first {lost} were lost")
        got = publish(zmq.XPUB, f"ipc://{private}/xpub")
        print(f"XPUB, waiting for the subscription: received {len(got)} of {MESSAGES}")
