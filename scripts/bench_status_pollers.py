"""What continuous status polling costs the connections being served.

Starts ``triosrv listen --control PATH`` on loopback, opens N idle connections, and
measures the echo round trips of one canary connection (its own process) twice in one
run: alone, then while P clients poll ``{"cmd": "status"}`` as fast as they can (each
its own process). Prints the canary's p50/p99 for both phases and the pollers' rate.
Every loop is bounded in time; the server is ended by its PID.

    python scripts/bench_status_pollers.py --connections 400 --pollers 4 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# The server on CPU 0, the clients on CPU 1, where taskset and two CPUs are there
# (--no-pin: let the kernel place them, as on a production host).
_CAN_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
SERVER = [sys.executable, "-m", "triosrv", "listen", "--port", "0"]

CANARY = r"""
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    t = time.perf_counter()
    s.sendall(b"x" * 64)
    got = 0
    while got < 64:
        got += len(s.recv(64 - got))
    times.append(time.perf_counter() - t)
    time.sleep(0.001)
times.sort()
print(len(times), times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3)
"""

POLLER = r"""
import json, socket, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
n = 0
end = time.perf_counter() + seconds
line = b""
while time.perf_counter() < end:
    s.sendall(b'{"cmd":"status"}\n')
    line = f.readline()
    # Parsing every document would make the pollers, not the server, the bottleneck.
    assert line.startswith(b'{"version"'), line[:200]
    n += 1
doc = json.loads(line)
print(n, doc["connections_total"] if "connections_total" in doc else len(doc["connections"]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args()
    pin = _CAN_PIN and not args.no_pin
    pin_server = ["taskset", "-c", "0"] if pin else []
    pin_clients = ["taskset", "-c", "1"] if pin else []
    with tempfile.TemporaryDirectory(prefix="triosrv-") as directory:
        control = os.path.join(directory, "control.sock")
        server = subprocess.Popen(
            # Room for the canary beside the idle connections (the default is 1,000).
            [
                *pin_server,
                *SERVER,
                "--control",
                control,
                "--max-connections",
                str(args.connections + 10),
            ],
            # Not the checkout: `-m triosrv` imports the interpreter's own install,
            # so `/other/venv/bin/python scripts/bench_status_pollers.py` measures it.
            cwd=directory,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = _wait_ready(server)
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)]
            alone = _canary(port, args.seconds, pin_clients)
            pollers = [
                subprocess.Popen(
                    [*pin_clients, sys.executable, "-c", POLLER, control, str(args.seconds + 0.5)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.pollers)
            ]
            time.sleep(0.3)
            cpu_before = _cpu_seconds(server.pid)
            loaded = _canary(port, args.seconds, pin_clients)
            cpu_after = _cpu_seconds(server.pid)
            server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
            polls = [p.communicate(timeout=60)[0].split() for p in pollers]
            for sock in idle:
                sock.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    rate = sum(int(p[0]) for p in polls) / (args.seconds + 0.5)
    print(
        f"status pollers: {args.connections} idle connections, {args.pollers} pollers, "
        f"{args.seconds:g} s per phase"
    )
    print(f"pinning: {'server on CPU 0, clients on CPU 1' if pin else 'none'}")
    print(f"{'phase':<16}{'round trips':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, (count, p50, p99) in (("canary alone", alone), ("with pollers", loaded)):
        print(f"{name:<16}{count:>12}{p50:>9.2f}{p99:>9.2f}")
    print(f"pollers: {rate:.0f} status documents/s in all (connections listed: {polls[0][1]})")
    if server_cpu is not None:
        print(f"server CPU while polled: {server_cpu / args.seconds:.0%} of one core")


def _wait_ready(server: subprocess.Popen[str]) -> int:
    assert server.stderr is not None
    port = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            raise SystemExit("the server exited before it was ready")
        if "listening on tcp://" in line:
            port = int(line.rsplit(":", 1)[1])
        if "control socket on" in line:
            return port
    raise SystemExit("the server was not ready within 30 s")


def _cpu_seconds(pid: int) -> float | None:
    # utime + stime of the server process, where /proc has them.
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _canary(port: int, seconds: float, pin: list[str]) -> tuple[int, float, float]:
    out = subprocess.run(
        [*pin, sys.executable, "-c", CANARY, str(port), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


if __name__ == "__main__":
    main()
