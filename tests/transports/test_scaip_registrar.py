"""The SCAIP receiver's registrar on real UDP sockets and a real store, on a fake clock:
expired bindings are deleted (on REGISTER and by the periodic sweep) while valid ones stay,
and a REGISTER's To user must be an identity the Digest credentials are allowed for."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.sim.scaip import ScaipDevice, SimError
from alarmd.store.db import Store
from alarmd.transports.sip import ScaipAccount, SipReceiver, SipSettings

NOW = datetime(2026, 11, 24, 21, 0, 0, tzinfo=UTC)
ACCOUNTS = {
    "group-x": ScaipAccount("x-password", cids=frozenset({"100", "101", "102"})),
    "unit-200": ScaipAccount("200-password", cids=frozenset({"200"})),
    "any": ScaipAccount("any-password"),  # no cids: a group account for any unit
}


@dataclass
class Registrar:
    store: Store
    receiver: SipReceiver
    clock: FakeClock

    def rows(self) -> dict[str, str]:
        """aor -> expires_at of every row in sip_bindings, read by another connection."""
        conn = sqlite3.connect(self.store.path)
        try:
            return dict(conn.execute("SELECT aor, expires_at FROM sip_bindings").fetchall())
        finally:
            conn.close()

    def device(self, cid: str, user: str, password: str) -> ScaipDevice:
        return ScaipDevice(
            "127.0.0.1",
            self.receiver.port,
            cid=cid,
            user=user,
            password=password,
            t1=0.05,
            timeout=5.0,
        )


async def _registrar(tmp_path: Path, **settings: float) -> AsyncIterator[Registrar]:
    clock = FakeClock(NOW)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    intake = Intake(store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: "t")
    receiver = SipReceiver(
        intake=intake,
        store=store,
        clock=clock,
        accounts=ACCOUNTS.get,
        settings=SipSettings(host="127.0.0.1", port=0, t1=0.05, **settings),  # type: ignore[arg-type]
    )
    await receiver.start()
    try:
        yield Registrar(store, receiver, clock)
    finally:
        await receiver.stop()
        await store.close()


@pytest.fixture
async def registrar(tmp_path: Path) -> AsyncIterator[Registrar]:
    async for r in _registrar(tmp_path):
        yield r


@pytest.fixture
async def swept(tmp_path: Path) -> AsyncIterator[Registrar]:
    """A receiver whose idle sweep runs every 10 ms of event-loop time (the purge in it is
    still paced by the fake clock)."""
    async for r in _registrar(tmp_path, sweep_interval=0.01):
        yield r


async def test_expired_bindings_deleted_on_register_valid_ones_kept(registrar: Registrar) -> None:
    short = registrar.device("100", "group-x", "x-password")
    long = registrar.device("101", "group-x", "x-password")
    late = registrar.device("102", "group-x", "x-password")
    async with short, long, late:
        await short.register(expires=60)
        await long.register(expires=3600)
        assert set(registrar.rows()) == {"sip:100@127.0.0.1", "sip:101@127.0.0.1"}
        registrar.clock.advance(59)  # not yet expired, and not yet time to purge
        await late.register(expires=3600)
        assert set(registrar.rows()) == {
            "sip:100@127.0.0.1",
            "sip:101@127.0.0.1",
            "sip:102@127.0.0.1",
        }
        registrar.clock.advance(61)  # 100's binding expired 60 s ago; the others are valid
        await late.register(expires=3600)  # a REGISTER purges (once a minute at most)
    rows = registrar.rows()
    assert set(rows) == {"sip:101@127.0.0.1", "sip:102@127.0.0.1"}
    assert set(registrar.receiver.bindings) == set(rows)
    # the refreshed binding counts from the second REGISTER
    assert rows["sip:102@127.0.0.1"] == "2026-11-24T22:02:00.000000Z"


async def test_expired_bindings_deleted_by_the_sweep(swept: Registrar) -> None:
    short = swept.device("100", "group-x", "x-password")
    long = swept.device("101", "group-x", "x-password")
    async with short, long:
        await short.register(expires=60)
        await long.register(expires=120)
    swept.clock.advance(90)  # only the first has expired; no REGISTER comes any more
    rows = swept.rows()
    for _ in range(500):  # the sweep runs every 10 ms: a bounded poll for its effect
        if len(rows) < 2:
            break
        await asyncio.sleep(0.01)
        rows = swept.rows()
    assert set(rows) == {"sip:101@127.0.0.1"}
    assert set(swept.receiver.bindings) == {"sip:101@127.0.0.1"}
    swept.clock.advance(60)  # now the second has expired too
    for _ in range(500):
        if not rows:
            break
        await asyncio.sleep(0.01)
        rows = swept.rows()
    assert rows == {}
    assert swept.receiver.bindings == {}


async def test_register_for_a_cid_outside_the_group_is_forbidden(registrar: Registrar) -> None:
    async with registrar.device("100", "group-x", "x-password") as inside:
        await inside.register()
    async with registrar.device("999", "group-x", "x-password") as outside:
        with pytest.raises(SimError, match="403"):
            await outside.register()
        assert outside._challenge is not None  # the credentials were right: not a 401 loop
    assert set(registrar.rows()) == {"sip:100@127.0.0.1"}
    assert set(registrar.receiver.bindings) == {"sip:100@127.0.0.1"}


async def test_device_account_cannot_register_or_remove_another_units_binding(
    registrar: Registrar,
) -> None:
    async with registrar.device("100", "group-x", "x-password") as owner:
        await owner.register()
    before = registrar.rows()
    # unit 200's credentials, To: unit 100 -- neither a new binding nor a removal
    async with registrar.device("100", "unit-200", "200-password") as intruder:
        with pytest.raises(SimError, match="403"):
            await intruder.register()
        with pytest.raises(SimError, match="403"):
            await intruder.register(expires=0)
        query = await intruder.request("REGISTER")  # no Contact: a query, refused too
        assert query.status == 403 and query.headers.get("Contact") is None
    assert registrar.rows() == before
    assert registrar.receiver.bindings["sip:100@127.0.0.1"].username == "group-x"
    # its own cid is fine; an account without cids may register any unit
    async with registrar.device("200", "unit-200", "200-password") as own:
        await own.register()
    async with registrar.device("4711", "any", "any-password") as anyone:
        await anyone.register()
    assert set(registrar.rows()) == {
        "sip:100@127.0.0.1",
        "sip:200@127.0.0.1",
        "sip:4711@127.0.0.1",
    }
