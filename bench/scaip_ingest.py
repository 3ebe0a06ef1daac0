"""SCAIP ingest benchmark: N simulated alarm units, closed loop, over UDP and over TCP, Digest.

The receiver (``SipReceiver`` on a real SQLite store with ``synchronous=FULL``: every
``<mrs>`` follows a durable commit) runs in this process on uvloop; the load generator runs
in a child process (another core) with N ``alarmd.sim.scaip.ScaipDevice`` units. Each unit
REGISTERs, then sends MESSAGEs one after the other, each with a new ``ref``, and waits for
the ``<mrs>`` (a separate SIP MESSAGE from the centre) before the next. Digest is on: the
first MESSAGE is challenged, later ones reuse the nonce with a rising nonce-count.

Printed per transport and N: alarms/s (``<mrs snu=0>`` received) and the latency from the
MESSAGE being sent to its ``<mrs>`` being received, p50 and p99.

Usage:  .venv/bin/python bench/scaip_ingest.py [--devices 1,10,100] [--duration 5]
        [--transports udp,tcp]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-secret"


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(port: int, transport: str, devices: int, duration: float) -> dict[str, object]:
    from alarmd.sim.scaip import ScaipDevice

    latencies: list[float] = []
    failures = 0
    units = [
        ScaipDevice(
            "127.0.0.1",
            port,
            cid=f"{700000 + i}",
            user="bench",
            password=PASSWORD,
            transport=transport,
            timeout=30.0,
        )
        for i in range(devices)
    ]
    for unit in units:
        await unit.open()
    await asyncio.gather(*(unit.register() for unit in units))
    # one untimed alarm each: takes the Digest nonce
    await asyncio.gather(*(unit.alarm() for unit in units))
    stop_at = time.perf_counter() + duration

    async def run(unit: ScaipDevice) -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                exchange = await unit.alarm(dty=3)
            except Exception:
                failures += 1
                continue
            if exchange.mrs is not None and exchange.mrs.snu == 0:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    began = time.perf_counter()
    await asyncio.gather(*(run(unit) for unit in units))
    elapsed = time.perf_counter() - began
    for unit in units:
        await unit.close()
    return {
        "alarms": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": _quantile(latencies, 0.5) * 1000,
        "p99_ms": _quantile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "failures": failures,
    }


def _child(port: int, transport: str, devices: int, duration: float, out: object) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(_load(port, transport, devices, duration))
    out.put(result)  # type: ignore[attr-defined]


async def _serve_and_measure(args: argparse.Namespace) -> None:
    from alarmd.clock import SystemClock
    from alarmd.intake import Intake
    from alarmd.store.db import Store
    from alarmd.transports.sip import (
        SIP_MRS_RETRANSMISSIONS,
        SIP_REQUESTS,
        ScaipAccount,
        SipReceiver,
        SipSettings,
    )

    def _requests_total() -> float:
        return sum(
            sample.value
            for metric in SIP_REQUESTS.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    account = ScaipAccount(PASSWORD)
    print(
        f"{'transport':>9} {'devices':>7} {'alarms/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5}"
    )
    for transport in args.transports.split(","):
        for devices in (int(n) for n in args.devices.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                store = await Store.open(Path(tmp) / "alarmd.sqlite")
                intake = Intake(
                    store,
                    dedup_window=timedelta(hours=24),
                    tenant_of=lambda protocol, source: "bench",
                )
                receiver = SipReceiver(
                    intake=intake,
                    store=store,
                    clock=SystemClock(),
                    accounts=lambda user: account if user == "bench" else None,
                    settings=SipSettings(host="127.0.0.1", port=0),
                )
                await receiver.start()
                retransmitted = SIP_MRS_RETRANSMISSIONS._value.get()
                requests_seen = _requests_total()
                ctx = multiprocessing.get_context("spawn")
                queue = ctx.Queue()
                proc = ctx.Process(
                    target=_child,
                    args=(receiver.port, transport, devices, args.duration, queue),
                )
                proc.start()
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(None, queue.get)
                await loop.run_in_executor(None, proc.join)
                await receiver.stop()
                await store.close()
            mrs_again = SIP_MRS_RETRANSMISSIONS._value.get() - retransmitted
            requests = _requests_total() - requests_seen
            print(
                f"{transport:>9} {devices:>7} {result['per_second']:>9.0f}"
                f" {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} {result['failures']:>5}"
                f" {mrs_again:>9.0f} {requests:>9.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,10,100")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--transports", default="udp,tcp")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve_and_measure(args))


if __name__ == "__main__":
    main()
