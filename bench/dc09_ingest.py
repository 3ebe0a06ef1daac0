"""DC-09 ingest benchmark: alarmd against a pysiaalarm receiver and a null receiver, in one run.

What it measures, for 1, 10, 100 and 1,000 persistent TCP connections in a closed loop
(each connection sends a clear-text ADM-CID frame and waits for the reply before the next):

* events/s acknowledged, ACK latency p50/p99 (client side: frame written -> ACK read),
* the server's CPU (utime+stime of its process over the measured interval, % of one core)
  and the client's, bytes written to storage and write syscalls per event,
* and, separately, the server's RSS growth per idle connection at 10,000 idle connections.

Servers, each in turn against the same client:

* ``null``: bench/dc09_null_server.py answers every frame with a precomputed ACK and does
  nothing else. Its figure is the load generator's ceiling on this machine: a receiver
  measured near it is measured against the client, not itself.
* ``alarmd``: the real daemon (``alarmd run``) with ``synchronous=FULL``: every ACK follows
  a durable commit. ``--compare-src DIR`` adds ``alarmd-base``, the daemon from another
  source tree (e.g. ``git archive <commit> alarmd | tar -x -C DIR``), for an A/B in one run.
* ``pysiaalarm``: PyPI's pysiaalarm in its own virtual environment; it ACKs before
  processing and stores nothing.

Each server first gets ``--prewarm`` seconds of untimed load, the same for all: a fresh
SQLite database is slower for its first thousands of commits while its WAL file grows,
and a receiver in service runs warm. Every run (pre-warm and each level) puts its own
number in the frames' partition field, so no run re-sends an earlier run's frames: with a
24 h de-dup window they would be retransmissions, answered without storing anything.

The client is cheap on purpose (frames from a CRC table, no encoding per frame; see
``_frames_for``) and runs in ``--clients`` processes (default 1: on 2 cores a second one
takes the server's core).

Usage:  .venv/bin/python bench/dc09_ingest.py [--duration 5] [--connections 1,10,100,1000]
        [--idle 10000] [--prewarm 8] [--servers null,alarmd,pysiaalarm] [--clients 1]
        [--compare-src DIR] [--skip-baseline] [--skip-null]
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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE_VENV = ROOT / "bench" / ".venv-pysiaalarm"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ACCOUNTS = [f"{0x10000 + i:X}" for i in range(1000)]


# --- load generator (runs in child processes) ----------------------------------------------


def _seq_crcs(rest_len: int) -> list[int]:
    """The CRC contribution of each seq 0..9999 to a body ``"ADM-CID"SSSS`` + rest.

    CRC-16/ARC starts at 0 and is linear over XOR, so a body's CRC is the CRC of the body
    with seq "0000" XOR the CRC of the seq digits' difference from "0" followed by
    ``rest_len`` zero bytes: a frame costs one table look-up instead of a CRC in Python.
    """
    from alarmd.protocols.dc09 import crc16_arc

    digit = [[crc16_arc(bytes([d]) + bytes(3 - k + rest_len)) for d in range(10)] for k in range(4)]
    return [
        digit[0][s // 1000] ^ digit[1][s // 100 % 10] ^ digit[2][s // 10 % 10] ^ digit[3][s % 10]
        for s in range(10000)
    ]


_SEQ_CRCS: dict[int, list[int]] = {}


def _frames_for(account: str, zone: int, partition: int):  # type: ignore[no-untyped-def]
    """``frame(seq)``: the clear ADM-CID frame ``encode_message`` builds, without its cost."""
    from alarmd.protocols.dc09 import crc16_arc, encode_message

    data = f"#{account}|1100 {partition:02d} {zone % 1000:03d}"
    head = b'"ADM-CID"'
    rest = f"R1L1#{account}[{data}]".encode()
    length = len(head) + 4 + len(rest)
    base = crc16_arc(head + b"0000" + rest)
    table = _SEQ_CRCS.get(len(rest))
    if table is None:
        table = _SEQ_CRCS[len(rest)] = _seq_crcs(len(rest))
    lead = b"\n%%04X%04X%b" % (length, head)

    def frame(seq: int) -> bytes:
        return lead % (base ^ table[seq]) + b"%04d%b\r" % (seq, rest)

    for seq in (1, 42, 9999):  # the shortcut must build exactly the real frame
        real = encode_message("ADM-CID", seq, account, data, receiver="1", line="1")
        assert frame(seq) == real, (frame(seq), real)
    return frame


class _ClosedLoop(asyncio.Protocol):
    """One transmitter: send a frame, wait for its reply, send the next; nothing else."""

    def __init__(self, make_frame, stats: dict, start_at: float) -> None:  # type: ignore[no-untyped-def]
        self.make_frame = make_frame
        self.stats = stats
        self.lat: list[int] = stats["lat"]
        self.start_at = start_at
        self.warm_until = int((start_at + stats["warmup"]) * 1e9)
        self.stop_at = int((start_at + stats["warmup"] + stats["duration"]) * 1e9)
        self.seq = 0
        self.buffer = b""
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def begin(self) -> None:
        self._send()

    def _send(self) -> None:
        self.seq = self.seq % 9999 + 1
        self.sent_at = time.time_ns()
        assert self.transport is not None
        self.transport.write(self.make_frame(self.seq))

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if data[-1] != 13:  # a reply split across reads (rare): wait for its CR
            self.buffer = data
            return
        now = time.time_ns()
        if b'"ACK"' in data:
            if now >= self.warm_until:
                self.stats["acked"] += 1
                self.lat.append(now - self.sent_at)
        else:
            self.stats["other"] += 1
        if now >= self.stop_at:
            if not self.done.done():
                self.done.set_result(None)
            return
        self._send()

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        if not self.done.done():
            self.done.set_result(None)


async def _loadgen(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stats: dict = {
        "acked": 0,
        "other": 0,
        "lat": [],
        "warmup": args.warmup,
        "duration": args.duration,
    }
    protocols = []
    first, count = args.first_connection, args.connections_one
    for i in range(first, first + count):
        account = ACCOUNTS[i % len(ACCOUNTS)]
        make = _frames_for(account, i, args.partition)
        _, proto = await loop.create_connection(
            lambda make=make: _ClosedLoop(make, stats, args.start_at), "127.0.0.1", args.port
        )
        protocols.append(proto)
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    for p in protocols:
        p.begin()
    await asyncio.sleep(max(0.0, args.start_at + args.warmup - time.time()))
    cpu0 = time.process_time()
    await asyncio.gather(*(p.done for p in protocols))
    cpu1 = time.process_time()
    for p in protocols:
        p.transport.close()
    return {
        "acked": stats["acked"],
        "non_ack_replies": stats["other"],
        "client_cpu_s": cpu1 - cpu0,
        # a histogram in 10 us buckets: a list of every latency overflows a pipe at 1e5/s
        "lat_10us": sorted(Counter(ns // 10_000 for ns in stats["lat"]).items()),
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
    result = uvloop.run(_loadgen(args))
    print(json.dumps(result), flush=True)


# --- orchestration ------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _io(pid: int) -> tuple[int, int]:
    """(bytes the process had written to storage, write syscalls) so far."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["syscw"])


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


def start_alarmd(workdir: Path, src: Path | None = None, name: str = "alarmd") -> Server:
    """The real daemon; with ``src``, alarmd's package from that source tree (an A/B run)."""
    data = workdir / f"{name}-data"
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
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/alarmd"), "run", "--config", str(config), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 30
    while not (data / "run.json").exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("alarmd did not start")
        time.sleep(0.05)
    return Server(name, proc, json.loads((data / "run.json").read_text())["dc09_port"])


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


_runs = 0


def _quantile(hist: Counter[int], q: float) -> float | None:
    """The q-quantile (ms) of a histogram of 10 us buckets (upper bucket edge)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return (bucket + 1) / 100
    return None


def start_null() -> Server:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "dc09_null_server.py")], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"null receiver did not start: {line!r}")
    return Server("null", proc, int(line.split()[1]))


def run_load(
    server: Server, connections: int, duration: float, warmup: float, clients: int = 1
) -> dict:
    """Closed-loop load from ``clients`` processes sharing ``connections`` between them.

    Every run gets its own partition number in the frames' data: a run's frames are never
    retransmissions of an earlier run's (seq restarts at 1 on every connection, and the
    de-duplication window is a day), so every measured frame is a new event to store.
    """
    global _runs
    _runs += 1
    clients = max(1, min(clients, connections))
    start_at = time.time() + 1.0 + connections / 1000
    children = []
    first = 0
    for k in range(clients):
        share = connections // clients + (1 if k < connections % clients else 0)
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--loadgen",
                    "--port",
                    str(server.port),
                    "--connections-one",
                    str(share),
                    "--first-connection",
                    str(first),
                    "--partition",
                    str(_runs % 100),
                    "--start-at",
                    repr(start_at),
                    "--duration",
                    str(duration),
                    "--warmup",
                    str(warmup),
                ],
                stdout=subprocess.PIPE,
            )
        )
        first += share
    time.sleep(max(0.0, start_at + warmup - time.time()))
    cpu0, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
    io0 = _io(server.proc.pid)
    outs = [child.communicate(timeout=duration + warmup + 120)[0] for child in children]
    cpu1, t1 = _cpu_seconds(server.proc.pid), time.perf_counter()
    io1 = _io(server.proc.pid)
    parts = [json.loads(out) for out in outs]
    hist: Counter[int] = Counter()
    for part in parts:
        hist.update(dict(part["lat_10us"]))
    acked = sum(part["acked"] for part in parts)
    return {
        "connections": connections,
        "clients": clients,
        "events_per_s": acked / duration,
        "p50_ms": _quantile(hist, 0.50),
        "p99_ms": _quantile(hist, 0.99),
        "acked": acked,
        "non_ack_replies": sum(part["non_ack_replies"] for part in parts),
        "server_cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "client_cpu_pct": 100.0 * sum(part["client_cpu_s"] for part in parts) / duration,
        # per acknowledged event: bytes written to storage (WAL, checkpoints) and write
        # syscalls (socket writes included)
        "disk_bytes_per_event": (io1[0] - io0[0]) / acked if acked else 0.0,
        "writes_per_event": (io1[1] - io0[1]) / acked if acked else 0.0,
    }


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
    parser.add_argument("--first-connection", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--partition", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
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
    parser.add_argument(
        "--skip-null", action="store_true", help="do not measure the null receiver (ceiling)"
    )
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated subset and order of null,alarmd,pysiaalarm (default: all)",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        help="also run alarmd from this source tree (e.g. a git worktree of the last "
        "commit) as 'alarmd-base', in the same run",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="load-generator processes sharing the connections (default 1)",
    )
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return
    _raise_nofile()
    levels = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="alarmd-bench-"))
    results: dict[str, dict] = {}
    try:
        known = {
            "null": start_null,
            "alarmd": lambda: start_alarmd(workdir),
            "pysiaalarm": start_pysiaalarm,
        }
        if args.compare_src is not None:
            src = args.compare_src.resolve()
            known["alarmd-base"] = lambda: start_alarmd(workdir, src, "alarmd-base")
        names = args.servers.split(",") if args.servers else list(known)
        if args.skip_null and "null" in names:
            names.remove("null")
        if args.skip_baseline and "pysiaalarm" in names:
            names.remove("pysiaalarm")
        starters = [(name, known[name]) for name in names]
        for name, start in starters:
            server = start()
            try:
                if args.prewarm > 0:
                    run_load(server, 100, args.prewarm, 0.5, args.clients)
                results[name] = {
                    "load": [
                        run_load(server, n, args.duration, args.warmup, args.clients)
                        for n in levels
                    ]
                }
                if args.idle and name != "null":
                    results[name]["idle"] = idle_rss(server, args.idle)
            finally:
                server.stop()
        import sqlite3

        for name in ("alarmd", "alarmd-base"):
            if name in results:
                db = workdir / f"{name}-data" / "alarmd.sqlite"
                stored = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
                results[name]["stored_events"] = stored
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"\nDC-09 ingest, closed loop, {args.duration:g} s per level"
        f" after {args.warmup:g} s warm-up; "
        f"alarmd with synchronous=FULL (ACK after commit)\n"
    )
    print(f"load generator: {args.clients} client process(es)\n")
    print(
        f"{'server':11} {'conns':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'srv CPU%':>8} {'cli CPU%':>8} {'disk B/ev':>9} {'writes/ev':>9}"
    )
    for name, r in results.items():
        for row in r["load"]:
            print(
                f"{name:11} {row['connections']:>5} {row['events_per_s']:>10.0f} "
                f"{row['p50_ms'] or 0:>8.2f} {row['p99_ms'] or 0:>8.2f}"
                f" {row['server_cpu_pct']:>8.0f} {row['client_cpu_pct']:>8.0f}"
                f" {row['disk_bytes_per_event']:>9.0f} {row['writes_per_event']:>9.1f}"
            )
    if "null" in results and "pysiaalarm" in results:
        print("\nnull receiver (load generator ceiling) / pysiaalarm (events/s):")
        for a, b in zip(results["null"]["load"], results["pysiaalarm"]["load"], strict=True):
            ratio = a["events_per_s"] / b["events_per_s"] if b["events_per_s"] else float("inf")
            print(f"  {a['connections']:>5} connections: {ratio:.2f}x")
    for name in ("alarmd", "alarmd-base"):
        if name in results and "pysiaalarm" in results:
            print(f"\nratio {name} / pysiaalarm (events/s):")
            for a, b in zip(results[name]["load"], results["pysiaalarm"]["load"], strict=True):
                ratio = a["events_per_s"] / b["events_per_s"] if b["events_per_s"] else 0.0
                print(f"  {a['connections']:>5} connections: {ratio:.2f}x")
    for name, r in results.items():
        if "idle" in r:
            i = r["idle"]
            print(
                f"\n{name}: RSS {i['rss_before_kib']} KiB -> {i['rss_after_kib']} KiB with "
                f"{i['idle_connections']} idle connections = {i['kib_per_connection']:.2f} KiB each"
            )
    for name in ("alarmd", "alarmd-base"):
        if name in results:
            print(f"\n{name} stored {results[name]['stored_events']} events")
    print("\nJSON:", json.dumps(results))


if __name__ == "__main__":
    main()
