"""ZeroMQ high-water marks: PUSH blocks when its queues are full, PUB drops.

Every ZeroMQ socket queues messages up to its high-water mark (SNDHWM on the
sender, RCVHWM on the receiver, 1000 messages by default; plus what the
kernel's socket buffers hold). When the reader does not keep up:

- PUSH (and DEALER, REQ) block in send(), or raise zmq.Again after SNDTIMEO
  (at once with flags=zmq.NOBLOCK): backpressure, nothing lost;
- PUB (and ROUTER to an unknown peer) drop the message, silently.

Both ends are in this one process to keep the example short; between
processes it behaves the same.
"""

from __future__ import annotations

import tempfile

import zmq

HWM = 10
PAYLOAD = b"x" * 65536
SENT = 1000


def drain(sock: zmq.Socket[bytes]) -> int:
    count = 0
    while sock.poll(200):
        sock.recv()
        count += 1
    return count


if __name__ == "__main__":
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="zmq-hwm-") as private:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, HWM)
        pull.bind(f"ipc://{private}/pipeline")
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, HWM)
        push.connect(f"ipc://{private}/pipeline")
        push.setsockopt(zmq.SNDTIMEO, 500)  # a bound on each blocking send
        queued = 0
        try:
            while queued < SENT:
                push.send(PAYLOAD)
                queued += 1
        except zmq.Again:
            print(
                f"PUSH: send() blocked after {queued} messages (SNDHWM {HWM} + RCVHWM {HWM} "
                "+ kernel buffers) and raised zmq.Again after SNDTIMEO, 0.5 s"
            )
        print(f"PULL: all {drain(pull)} queued messages arrive once it reads; none lost")

        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, HWM)
        xpub.bind(f"ipc://{private}/broadcast")
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, HWM)
        sub.connect(f"ipc://{private}/broadcast")
        sub.subscribe(b"")
        if not xpub.poll(5000):  # the subscription: see 23_zmq_slow_joiner.py
            raise SystemExit("no subscriber within 5 s")
        xpub.recv()
        for _ in range(SENT):
            xpub.send(PAYLOAD)  # never blocks
        received = drain(sub)
        print(
            f"PUB: sent {SENT} without blocking; subscriber got {received}, "
            f"{SENT - received} dropped silently"
        )
    ctx.destroy(linger=0)
