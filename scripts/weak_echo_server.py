"""A deliberately weak echo server, for `triosrv chaos` to find failures in.

One blocking loop: accept a client, echo until it closes, accept the next. No timeouts,
no concurrency, no limits -- the design every chaos scenario is meant to expose. It
survives a peer's reset (so one report can show every failure) but nothing more.

    python scripts/weak_echo_server.py [--port 0]     # prints "listening on 127.0.0.1:PORT"

It also prints ``listening on tcp://127.0.0.1:PORT`` to stderr, the ready line of
``triosrv listen``.
"""

from __future__ import annotations

import argparse
import socket
import sys


def serve(port: int) -> None:
    """Serve one client at a time on 127.0.0.1:``port`` until killed."""
    with socket.create_server(("127.0.0.1", port)) as listener:
        port = listener.getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        # The ready line of triosrv listen, on stderr, for tools that start servers
        # the way the benchmarks do (triosrv._server_processes, triosrv chaos-suite).
        print(f"listening on tcp://127.0.0.1:{port}", file=sys.stderr, flush=True)
        while True:
            conn, _addr = listener.accept()
            with conn:
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except (ConnectionResetError, BrokenPipeError):
                    continue  # the peer went away: take the next one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        serve(args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
