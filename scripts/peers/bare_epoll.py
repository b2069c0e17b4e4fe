"""Reference for scripts/bench.py: the bare Python epoll echo loop.

Usage: ``python scripts/peers/bare_epoll.py [PORT]``. Prints ``listening on
tcp://127.0.0.1:PORT`` to stderr when ready and runs until killed.

The textbook single-threaded design with nothing else: one level-triggered epoll set,
``os.read`` and ``os.write`` on the fd, a dict of sockets, and the unsent tail of a
reply kept until the socket has room. No timeouts, no counters, no cancellation, no
limits: what is left of a Python server when everything triosrv adds is taken away,
so that the table shows what that costs.
"""

from __future__ import annotations

import os
import select
import socket
import sys


def serve(listener: socket.socket) -> None:
    """Echo on every connection ``listener`` accepts, forever."""
    ep = select.epoll()
    lfd = listener.fileno()
    ep.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    unsent: dict[int, bytes] = {}
    read, write, poll = os.read, os.write, ep.poll

    def close(fd: int) -> None:
        ep.unregister(fd)
        unsent.pop(fd, None)
        socks.pop(fd).close()

    while True:
        for fd, _events in poll():
            if fd == lfd:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[sock.fileno()] = sock
                ep.register(sock.fileno(), select.EPOLLIN)
                continue
            pending = unsent.pop(fd, None)  # None: waiting for bytes, else for room
            try:
                out = read(fd, 65536) if pending is None else pending
            except BlockingIOError:
                continue
            except OSError:  # reset by the peer
                close(fd)
                continue
            if not out:  # EOF
                close(fd)
                continue
            try:
                sent = write(fd, out)
            except BlockingIOError:
                sent = 0
            except OSError:
                close(fd)
                continue
            if sent < len(out):
                unsent[fd] = out[sent:]
                if pending is None:
                    ep.modify(fd, select.EPOLLOUT)
            elif pending is not None:
                ep.modify(fd, select.EPOLLIN)


def main(port: int) -> None:
    """Serve echo on 127.0.0.1 until killed."""
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    bound = listener.getsockname()[1]
    print(f"listening on tcp://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    serve(listener)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
