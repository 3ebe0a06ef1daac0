"""MQTT ingest: durable events/s and latency from publish to commit, through a real Mosquitto.

A publisher process (this file with ``--publisher``) sends native events at QoS 1 from 500
device ids, either as fast as it can with ``--concurrency`` messages in flight, or at a fixed
``--rate``; alarmd's ``MqttIngest`` (persistent session, PUBACK only after the commit)
stores them in SQLite (WAL, synchronous=FULL). Each payload carries its publish time, so
the latency printed is publish -> durable commit, per event.

Run:  .venv/bin/python bench/mqtt_ingest.py [--events 5000] [--concurrency 100] [--rate 0]
      (several runs: --rate 100, 300, 600 for latency at a given load)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the broker fixture lives with the tests


async def publisher(port: int, events: int, concurrency: int, rate: float) -> None:
    import aiomqtt

    from alarmd.protocols.mqtt_events import native_topic
    from alarmd.sim.mqtt import native_event_payload

    limit = asyncio.Semaphore(concurrency)
    options = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
    async with aiomqtt.Client("127.0.0.1", port, socket_options=options) as client:

        async def one(i: int) -> None:
            async with limit:
                payload = native_event_payload(
                    "fall", event_id=f"b{i}", attributes={"t": repr(time.time())}
                )
                await client.publish(native_topic("bench", f"D{i % 500}"), payload, qos=1)

        if rate:
            start = time.perf_counter()
            tasks = []
            for i in range(events):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(one(i) for i in range(events)))


async def receiver(events: int, concurrency: int, rate: float) -> None:
    from alarmd.clock import SystemClock
    from alarmd.intake import Intake
    from alarmd.model import Event, Receipt
    from alarmd.store.db import Store
    from alarmd.transports.mqtt import MqttIngest, MqttIngestSettings

    from mqtt_broker import running_broker

    directory = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    with running_broker(directory / "broker") as broker:
        store = await Store.open(directory / "bench.sqlite")
        intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=lambda p, s: None)
        latencies: list[float] = []
        done = asyncio.Event()

        def committed(batch: Sequence[Event], receipt: Receipt) -> None:
            now = time.time()
            latencies.extend(now - float(e.attributes["t"]) for e in batch)
            if len(latencies) >= events:
                done.set()

        intake.add_listener(committed)
        ingest = MqttIngest(
            intake=intake,
            clock=SystemClock(),
            settings=MqttIngestSettings(broker=broker.settings()),
        )
        task = asyncio.create_task(ingest.run())
        await ingest.connected.wait()
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--publisher",
            str(broker.port),
            "--events",
            str(events),
            "--concurrency",
            str(concurrency),
            "--rate",
            str(rate),
        )
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
        await proc.wait()
        task.cancel()
        await store.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    load = f"offered {rate:.0f}/s" if rate else f"{concurrency} in flight"
    print(
        f"{events} events, {load}: {events / elapsed:,.0f} durable events/s;"
        f" publish->commit p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as it can")
    parser.add_argument("--publisher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        asyncio.run(publisher(args.publisher, args.events, args.concurrency, args.rate))
        return
    asyncio.run(receiver(args.events, args.concurrency, args.rate))


if __name__ == "__main__":
    main()
