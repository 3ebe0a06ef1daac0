"""DC-09 ingest benchmark: alarmd against a pysiaalarm receiver, in the same run.

What it measures, for 1, 10, 100 and 1,000 persistent TCP connections in a closed loop
(each connection sends a clear-text ADM-CID frame and waits for the ACK before the next):

* events/s acknowledged, ACK latency p50/p99 (client side: frame written -> ACK read),
* the server's CPU (utime+stime of its process over the measured interval, % of one core),
* and, separately, the server's RSS growth per idle connection at 10,000 idle connections.

Each server first gets ``--prewarm`` seconds of untimed load, the same for both: a fresh
SQLite database is slower for its first thousands of commits while its WAL file grows,
and a receiver in service runs warm.

alarmd runs as the real daemon (``alarmd run``) with ``synchronous=FULL``: every ACK
follows a durable commit. The baseline is pysiaalarm (PyPI) in its own virtual
environment; it ACKs before processing and stores nothing. The load generator runs in
its own process (so on the other core of a 2-core machine) and is the same for both.

Usage:  .venv/bin/python bench/dc09_ingest.py [--duration 5] [--connections 1,10,100,1000]
        [--idle 10000] [--prewarm 8] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE_VENV = ROOT / "bench" / ".venv-pysiaalarm"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ACCOUNTS = [f"{0x10000 + i:X}" for i in range(1000)]


# --- load generator (runs in a child process) --------------------------------------------


def _frames_for(account: str, zone: int):  # type: ignore[no-untyped-def]
    from alarmd.protocols.dc09 import encode_message

    def frame(seq: int) -> bytes:
        data = f"#{account}|1100 01 {zone % 1000:03d}"
        return encode_message("ADM-CID", seq, account, data, receiver="1", line="1")

    return frame


class _ClosedLoop(asyncio.Protocol):
    def __init__(self, make_frame, stats: dict, stop_at: float, warm_until: float) -> None:  # type: ignore[no-untyped-def]
        self.make_frame = make_frame
        self.stats = stats
        self.stop_at = stop_at
        self.warm_until = warm_until
        self.seq = 0
        self.buffer = bytearray()
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        self.seq = self.seq % 9999 + 1
        self.sent_at = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(self.make_frame(self.seq))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r")) >= 0:
            reply = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            now = time.perf_counter_ns()
            if b'"ACK"' in reply:
                if now / 1e9 >= self.warm_until:
                    self.stats["acked"] += 1
                    self.stats["lat"].append((now - self.sent_at) / 1e6)
            else:
                self.stats["other"] += 1
            if now / 1e9 >= self.stop_at:
                if not self.done.done():
                    self.done.set_result(None)
                return
            self._send()

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        if not self.done.done():
            self.done.set_result(None)


async def _loadgen(port: int, connections: int, duration: float, warmup: float) -> dict:
    loop = asyncio.get_running_loop()
    stats: dict = {"acked": 0, "other": 0, "lat": []}
    start = time.perf_counter()
    warm_until = start + warmup
    stop_at = warm_until + duration
    protocols = []
    for i in range(connections):
        account = ACCOUNTS[i % len(ACCOUNTS)]
        make = _frames_for(account, i)
        _, proto = await loop.create_connection(
            lambda make=make: _ClosedLoop(make, stats, stop_at, warm_until), "127.0.0.1", port
        )
        protocols.append(proto)
    await asyncio.gather(*(p.done for p in protocols))
    elapsed = time.perf_counter() - warm_until
    for p in protocols:
        p.transport.close()
    lat = sorted(stats["lat"])
    return {
        "connections": connections,
        "events_per_s": stats["acked"] / elapsed if elapsed > 0 else 0.0,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] if len(lat) >= 100 else (lat[-1] if lat else None),
        "acked": stats["acked"],
        "non_ack_replies": stats["other"],
    }


async def _hold_idle(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(count):
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        socks.append(transport)
    print("HOLDING", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for t in socks:
        t.close()


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loadgen_main(args: argparse.Namespace) -> None:
    _raise_nofile()
    import uvloop

    if args.hold_idle:
        uvloop.run(_hold_idle(args.port, args.hold_idle))
        return
    result = uvloop.run(_loadgen(args.port, args.connections_one, args.duration, args.warmup))
    print(json.dumps(result), flush=True)


# --- orchestration ------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.proc, self.port = name, proc, port

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_alarmd(workdir: Path) -> Server:
    data = workdir / "alarmd-data"
    accounts = workdir / "accounts.yaml"
    accounts.write_text(
        "accounts:\n"
        + "".join(f'  - account: "{a}"\n    tenant: bench-kommune\n' for a in ACCOUNTS)
    )
    port = _free_port()
    config = workdir / "alarmd.yaml"
    config.write_text(
        f"log:\n  level: warning\napi:\n  listen: 127.0.0.1:0\n"
        f"dc09:\n  listen: 127.0.0.1:{port}\n  max_connections: 30000\n"
        f"accounts_file: {accounts}\n"
    )
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/alarmd"), "run", "--config", str(config), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while not (data / "run.json").exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("alarmd did not start")
        time.sleep(0.05)
    return Server("alarmd", proc, json.loads((data / "run.json").read_text())["dc09_port"])


def ensure_baseline_venv() -> Path:
    python = BASELINE_VENV / "bin" / "python"
    if not python.exists():
        print("creating the pysiaalarm baseline venv (bench/.venv-pysiaalarm)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BASELINE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pysiaalarm"], check=True)
    return python


def start_pysiaalarm() -> Server:
    python = ensure_baseline_venv()
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(python),
            str(ROOT / "bench" / "pysiaalarm_server.py"),
            "--port",
            str(port),
            "--accounts",
            ",".join(ACCOUNTS),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"pysiaalarm did not start: {line!r}")
    return Server("pysiaalarm", proc, port)


def run_load(server: Server, connections: int, duration: float, warmup: float) -> dict:
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--loadgen",
            "--port",
            str(server.port),
            "--connections-one",
            str(connections),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ],
        stdout=subprocess.PIPE,
    )
    time.sleep(warmup)
    cpu0, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
    out, _ = child.communicate(timeout=duration + warmup + 120)
    cpu1, t1 = _cpu_seconds(server.proc.pid), time.perf_counter()
    result = json.loads(out)
    result["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    return result


def idle_rss(server: Server, count: int) -> dict:
    before = _rss_kib(server.proc.pid)
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--loadgen",
            "--port",
            str(server.port),
            "--hold-idle",
            str(count),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    if child.stdout.readline().strip() != b"HOLDING":
        raise RuntimeError("idle client failed")
    time.sleep(1.0)
    after = _rss_kib(server.proc.pid)
    child.stdin.write(b"\n")
    child.stdin.flush()
    child.wait(60)
    return {
        "idle_connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hold-idle", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--prewarm",
        type=float,
        default=8.0,
        help="seconds of untimed load at 100 connections before the measured levels "
        "(a fresh database's WAL grows for its first thousands of commits; a running "
        "receiver lives in the warm state)",
    )
    parser.add_argument("--connections", default="1,10,100,1000")
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return
    _raise_nofile()
    levels = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="alarmd-bench-"))
    results: dict[str, dict] = {}
    try:
        starters = [("alarmd", lambda: start_alarmd(workdir))]
        if not args.skip_baseline:
            starters.append(("pysiaalarm", start_pysiaalarm))
        for name, start in starters:
            server = start()
            try:
                if args.prewarm > 0:
                    run_load(server, 100, args.prewarm, 0.5)
                results[name] = {
                    "load": [run_load(server, n, args.duration, args.warmup) for n in levels]
                }
                if args.idle:
                    results[name]["idle"] = idle_rss(server, args.idle)
            finally:
                server.stop()
        if "alarmd" in results:
            db = workdir / "alarmd-data" / "alarmd.sqlite"
            import sqlite3

            stored = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
            results["alarmd"]["stored_events"] = stored
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"\nDC-09 ingest, closed loop, {args.duration:g} s per level"
        f" after {args.warmup:g} s warm-up; "
        f"alarmd with synchronous=FULL (ACK after commit)\n"
    )
    print(f"{'server':11} {'conns':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU %':>6}")
    for name, r in results.items():
        for row in r["load"]:
            print(
                f"{name:11} {row['connections']:>5} {row['events_per_s']:>10.0f} "
                f"{row['p50_ms'] or 0:>8.2f} {row['p99_ms'] or 0:>8.2f}"
                f" {row['server_cpu_pct']:>6.0f}"
            )
    if "alarmd" in results and "pysiaalarm" in results:
        print("\nratio alarmd / pysiaalarm (events/s):")
        for a, b in zip(results["alarmd"]["load"], results["pysiaalarm"]["load"], strict=True):
            ratio = a["events_per_s"] / b["events_per_s"] if b["events_per_s"] else float("inf")
            print(f"  {a['connections']:>5} connections: {ratio:.2f}x")
    for name, r in results.items():
        if "idle" in r:
            i = r["idle"]
            print(
                f"\n{name}: RSS {i['rss_before_kib']} KiB -> {i['rss_after_kib']} KiB with "
                f"{i['idle_connections']} idle connections = {i['kib_per_connection']:.2f} KiB each"
            )
    if "alarmd" in results:
        print(f"\nalarmd stored {results['alarmd']['stored_events']} events")
    print("\nJSON:", json.dumps(results))


if __name__ == "__main__":
    main()
