"""ZeroMQ REQ/REP: strict request, reply, request, reply -- and what a lost reply does.

A REQ socket must receive a reply before it may send again. If the server is
slow or dead, waiting with a timeout is not enough: the socket is stuck in
"waiting for a reply" and send() raises EFSM. The usual fix (the "lazy
pirate" pattern) closes that socket and opens a fresh one. A late reply to the
old socket is then simply dropped.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time

import zmq


def server(address: str) -> None:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(address)
    try:
        while rep.poll(10_000):
            request = rep.recv_string()
            if request == "slow":
                time.sleep(1.5)
            rep.send_string(request.upper())
            if request == "stop":
                break
    finally:
        ctx.destroy(linger=1000)


def client(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)  # closing it drops a pending request instead of waiting
    req.connect(address)
    return req


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="zmq-reqrep-") as private:
        address = f"ipc://{private}/server"
        p = mp.Process(target=server, args=(address,))
        p.start()
        ctx = zmq.Context()
        req = client(ctx, address)
        for word in ("hello", "world"):
            req.send_string(word)
            if req.poll(5000):
                print(f"request {word!r} -> reply {req.recv_string()!r}")

        req.send_string("slow")
        if not req.poll(500):
            print("request 'slow': no reply within 0.5 s")
        try:
            req.send_string("next")
        except zmq.ZMQError as exc:
            print(f"sending again on the same REQ socket fails: {exc}")
        req.close()
        req = client(ctx, address)  # lazy pirate: a fresh socket
        req.send_string("stop")
        if req.poll(5000):
            print(f"a fresh REQ socket works: 'stop' -> {req.recv_string()!r}")
        p.join(timeout=10)
        ctx.destroy(linger=0)
