"""A SCAIP alarm unit simulator: REGISTER with Digest, MESSAGE ``<mrq>``, wait for ``<mrs>``.

For tests, the benchmark and ``alarmctl simulate scaip``. It behaves like a device:

* answers 401 challenges with Digest (MD5, ``qop=auth``), keeps the nonce and counts ``nc``
  up for the next requests, takes a new nonce on ``stale=true``;
* over UDP retransmits a request from T1 doubling to T2 until a response arrives
  (RFC 3261 timer E), giving up after 64*T1 (timer F);
* takes the ``<mrs>`` from a separate SIP MESSAGE (answering it 200) or from the body of the
  200 OK, whichever comes;
* ``alarm_until_handled`` re-sends the same ``<mrq>`` (same ref) after HOLD until ``snu=0``,
  after a fixed pause or one drawn from a range (a real unit: 5-20 s); the pause is taken
  by an injectable ``sleep`` so that tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from alarmd.protocols import scaip
from alarmd.protocols.sip import (
    KeepAlive,
    SipError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    build_request,
    build_response,
    digest_authorization,
    new_branch,
    new_call_id,
    new_tag,
    parse_auth_header,
    parse_datagram,
)

SCAIP_CONTENT_TYPE = "application/scaip+xml"


class SimError(Exception):
    """The exchange failed: no response, or a final response other than 2xx."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request's outcome: the final SIP response and, for a MESSAGE, the <mrs>."""

    response: SipResponse
    mrs: scaip.Mrs | None = None


def mrq_body(
    ref: str,
    cid: str,
    dty: int,
    *,
    stc: int | None = None,
    mty: str | None = None,
    hbo: bool = False,
    extra: str = "",
) -> bytes:
    parts = [f"<mrq><ref>{ref}</ref>"]
    if mty:
        parts.append(f"<mty>{mty}</mty>")
    parts.append(f"<cid>{cid}</cid><dty>{dty:04d}</dty>")
    if stc is not None:
        parts.append(f"<stc>{stc:04d}</stc>")
    if hbo:
        parts.append("<hbo>001</hbo>")
    parts.append(extra + "</mrq>")
    return "".join(parts).encode()


class ScaipDevice:
    """One simulated alarm unit talking to one receiver."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        cid: str,
        user: str,
        password: str,
        transport: str = "udp",
        ssl_context: ssl.SSLContext | None = None,
        t1: float = 0.5,
        t2: float = 4.0,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.cid = cid
        self.user = user
        self.password = password
        self.transport = transport.lower()
        self.ssl_context = ssl_context
        self.t1, self.t2, self.timeout = t1, t2, timeout
        self.local_host = "127.0.0.1"
        self.local_port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._responses: dict[str, asyncio.Future[SipResponse]] = {}
        self._mrs: dict[str, asyncio.Queue[scaip.Mrs]] = {}
        self._challenge: str | None = None
        self._nc = 0
        self._cseq = itertools.count(1)
        self._refs = itertools.count(1)
        self.mrs_messages = 0  # <mrs> MESSAGEs received (retransmissions included)

    # --- connection ------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _DeviceUdp(self), local_addr=(self.local_host, 0)
            )
            self._udp = udp
            self.local_host, self.local_port = udp.get_extra_info("sockname")[:2]
            return
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl_context if self.transport == "tls" else None
        )
        self._writer = writer
        self.local_host, self.local_port = writer.get_extra_info("sockname")[:2]
        self._reader_task = loop.create_task(self._read_stream(reader))

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task

    async def __aenter__(self) -> ScaipDevice:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_stream(self, reader: asyncio.StreamReader) -> None:
        parser = SipStreamParser()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for item in parser.feed(data):
                if not isinstance(item, KeepAlive | SipError):
                    self.on_message(item)

    def send_raw(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data, (self.host, self.port))  # port may change: a restart
        elif self._writer is not None:
            self._writer.write(data)

    def on_message(self, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            if message.status < 200:
                return
            vias = message.headers.get("Via") or ""
            branch = vias.split("branch=", 1)[-1].split(";", 1)[0].split(",", 1)[0].strip()
            future = self._responses.get(branch)
            if future is not None and not future.done():
                future.set_result(message)
            return
        # a request from the centre: the <mrs> MESSAGE (or anything else: 200 it)
        self.send_raw(build_response(message, 200, to_tag=new_tag()))
        if message.method == "MESSAGE" and message.body:
            self.mrs_messages += 1
            with contextlib.suppress(scaip.ScaipError):
                mrs = scaip.parse_mrs(message.body)
                self.mrs_queue(mrs.ref or "").put_nowait(mrs)

    def mrs_queue(self, ref: str) -> asyncio.Queue[scaip.Mrs]:
        queue = self._mrs.get(ref)
        if queue is None:
            queue = self._mrs[ref] = asyncio.Queue()
        return queue

    # --- requests --------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def aor(self) -> str:
        return f"sip:{self.cid}@{self.host}"

    def build(
        self,
        method: str,
        branch: str,
        call_id: str,
        cseq: int,
        *,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bytes:
        via = f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.local_port}"
        all_headers = [
            ("Via", f"{via};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={new_tag()}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            *headers,
        ]
        if self._challenge is not None:
            self._nc += 1
            all_headers.append(
                (
                    "Authorization",
                    digest_authorization(
                        method,
                        self.uri,
                        self.user,
                        self.password,
                        self._challenge,
                        cnonce=os.urandom(8).hex(),
                        nc=self._nc,
                    ),
                )
            )
        return build_request(method, self.uri, headers=all_headers, body=body)

    async def _transaction(self, data: bytes, branch: str) -> SipResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SipResponse] = loop.create_future()
        self._responses[branch] = future
        try:
            self.send_raw(data)
            if self._udp is None:
                return await asyncio.wait_for(future, self.timeout)
            interval, waited = self.t1, 0.0
            while waited < 64 * self.t1:
                done, _ = await asyncio.wait({future}, timeout=interval)
                if done:
                    return future.result()
                waited += interval
                interval = min(interval * 2, self.t2)
                self.send_raw(data)
            raise SimError("no response (timer F)")
        except TimeoutError as e:
            raise SimError("no response") from e
        finally:
            self._responses.pop(branch, None)

    async def request(
        self, method: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> SipResponse:
        """Send one request, answering up to two Digest challenges (a fresh one, a stale one)."""
        call_id = new_call_id(self.local_host)
        response: SipResponse | None = None
        for _attempt in range(3):
            branch = new_branch()
            data = self.build(
                method, branch, call_id, next(self._cseq), headers=list(headers), body=body
            )
            response = await self._transaction(data, branch)
            if response.status != 401:
                return response
            challenge = response.headers.get("WWW-Authenticate")
            if challenge is None:
                return response
            scheme, _params = parse_auth_header(challenge)
            if scheme != "digest":
                return response
            self._challenge, self._nc = challenge, 0
        assert response is not None
        return response

    async def register(self, expires: int = 3600) -> SipResponse:
        contact = f"<sip:{self.cid}@{self.local_host}:{self.local_port}>"
        response = await self.request(
            "REGISTER", headers=[("Contact", contact), ("Expires", str(expires))]
        )
        if response.status != 200:
            raise SimError(f"REGISTER: {response.status} {response.reason}")
        return response

    def new_ref(self) -> str:
        return f"{os.urandom(3).hex()}{next(self._refs)}"

    async def send_mrq(self, body: bytes, ref: str, *, want_mrs: bool = True) -> Exchange:
        """MESSAGE the ``<mrq>``; return the final response and the ``<mrs>`` for ``ref``."""
        queue = self.mrs_queue(ref)
        response = await self.request(
            "MESSAGE", headers=[("Content-Type", SCAIP_CONTENT_TYPE)], body=body
        )
        if response.status != 200:
            return Exchange(response)
        if response.body:
            return Exchange(response, scaip.parse_mrs(response.body))
        if not want_mrs:
            return Exchange(response)
        try:
            mrs = await asyncio.wait_for(queue.get(), self.timeout)
        except TimeoutError as e:
            raise SimError(f"no <mrs> for ref {ref}") from e
        return Exchange(response, mrs)

    async def alarm(
        self, dty: int = 3, stc: int | None = None, *, ref: str | None = None, hbo: bool = False
    ) -> Exchange:
        ref = ref or self.new_ref()
        return await self.send_mrq(mrq_body(ref, self.cid, dty, stc=stc, hbo=hbo), ref)

    async def alarm_until_handled(
        self,
        dty: int = 3,
        stc: int | None = None,
        *,
        ref: str | None = None,
        resend_after: float | tuple[float, float] = 5.0,
        max_sends: int = 360,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> list[Exchange]:
        """Like a device: re-send the same ``<mrq>`` on HOLD until ``snu=0`` (or give up).

        ``resend_after`` is the pause in seconds, or a (low, high) range to draw each pause
        from with ``rng`` (seed it for a repeatable test); ``sleep`` takes the pause."""
        ref = ref or self.new_ref()
        rng = rng or random.Random()
        out: list[Exchange] = []
        for _ in range(max_sends):
            exchange = await self.alarm(dty, stc, ref=ref)
            out.append(exchange)
            if exchange.mrs is None or exchange.mrs.snu != scaip.Snu.HOLD:
                return out
            if isinstance(resend_after, tuple):
                await sleep(rng.uniform(*resend_after))
            else:
                await sleep(resend_after)
        return out


class _DeviceUdp(asyncio.DatagramProtocol):
    def __init__(self, device: ScaipDevice) -> None:
        self.device = device

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            item = parse_datagram(data)
        except SipError:
            return
        if not isinstance(item, KeepAlive):
            self.device.on_message(item)


async def simulate(
    host: str,
    port: int,
    *,
    cid: str,
    user: str,
    password: str,
    dty: int = 3,
    stc: int | None = None,
    transport: str = "udp",
    ssl_context: ssl.SSLContext | None = None,
    register: bool = True,
    resend_after: float = 5.0,
) -> list[Exchange]:
    """What ``alarmctl simulate scaip`` does: register, send one alarm, re-send on HOLD
    until ``snu=0``; returns every exchange (the last one has the final ``<mrs>``)."""
    device = ScaipDevice(
        host,
        port,
        cid=cid,
        user=user,
        password=password,
        transport=transport,
        ssl_context=ssl_context,
    )
    async with device:
        if register:
            await device.register()
        return await device.alarm_until_handled(dty, stc, resend_after=resend_after)
