"""SIP transport for SCAIP: UDP and TCP on one port, TLS on another; registrar; <mrs> sending.

Theory of operation
-------------------
Every request, whatever its transport, goes through ``SipReceiver._handle``:

* ``OPTIONS`` -> 200. Anything but REGISTER, MESSAGE, OPTIONS -> 405 with ``Allow``.
* ``REGISTER`` -> Digest (``protocols.sip.DigestAuthenticator``) -> the To user must be one
  of the account's ``cids`` (403 otherwise, nothing stored: a device or group account may
  not register, query or remove another unit's binding) -> the binding is written through
  the store's writer and only then answered 200 with ``Contact;expires`` (so a 200 means
  the binding survives a restart). ``expires=0`` removes it. Expired bindings are deleted
  from memory and from ``sip_bindings`` at most once per ``binding_purge_interval`` (clock
  seconds), by a REGISTER or by the periodic sweep, whichever comes first.
* ``MESSAGE`` with ``application/scaip+xml`` (else 415) -> Digest -> ``scaip.handle_mrq``
  -> ``intake.submit_future`` -> **after the commit** 200 OK, then the ``<mrs>`` as a
  separate SIP MESSAGE (PROTOCOLS.md 2.1). A store failure gets 500 and no ``<mrs>``: the
  device re-sends, de-duplication (cid + ref) makes that safe. Per account,
  ``mrs_in_200`` puts the ``<mrs>`` in the 200 body instead.
* The ``<mrs>`` goes, over a stream, back on the connection the MESSAGE came on; over UDP
  to the device's registered binding (its REGISTER's source when it asked for ``rport``,
  else its Contact) or, without one, to the MESSAGE's source. On UDP it is retransmitted
  from T1 (500 ms) doubling to T2 (4 s) until a response arrives or 64*T1 passed
  (RFC 3261 17.1.2.2, timers E and F).
* Acknowledgement policy per account: ``on_commit`` answers ``snu=0`` once committed;
  ``hold_until_accepted`` answers ``snu=4`` (HOLD) once committed and ``snu=0`` only when
  ``case_state(cid, ref)`` says a human accepted the case (one of ``ACCEPTED_STATES``;
  ``store_case_state`` is that lookup on the store's cases).
  The device re-sends the same ref on HOLD; intake stores it once (same dedup key).
  Without a ``case_state`` callable HOLD accounts fall back to ``on_commit`` (logged).
* More than ``max_in_flight`` MESSAGEs waiting for a commit -> ``snu=6`` BUSY at once,
  rather than queueing without bound.
* A retransmitted request (same Via branch) while the first is in flight is dropped; after
  it is answered the cached final response is sent again (a small server-transaction
  table, swept with the idle connections).

* Accounts come from a lookup callable (Digest username -> ``ScaipAccount``): a user per
  device (``cids`` = its own cid: a request for another cid gets ``snu=3``) or per group of
  devices (``cids`` None). ``hbi`` is answered to ``hbo=001`` from ``heartbeat_minutes``,
  spread +-10 % per cid so heartbeats of devices installed together do not synchronise.
* ``case_state(cid, ref)`` is the routing engine's view of the case the alarm opened
  (a state name such as "open", "accepted", "closed"; None if there is none yet). It is
  called on the event loop for every HOLD-policy alarm and re-send, so it must be a cheap
  in-memory lookup.

Bad SIP -> 400 (or 413 for size) when the head parsed far enough to answer; otherwise
dropped (UDP) or the connection closed (stream, fatal framing error). A UDP datagram over
``max_message_bytes`` is dropped without an answer (the codec refuses it before parsing).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, cast

import structlog
from prometheus_client import Counter, Histogram

from alarmd import metrics
from alarmd.clock import Clock
from alarmd.intake import Intake
from alarmd.model import Receipt
from alarmd.protocols import scaip
from alarmd.protocols.sip import (
    KEEPALIVE_PONG,
    MAX_MESSAGE_BYTES,
    DigestAuthenticator,
    KeepAlive,
    NonceCounts,
    SipError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    build_request,
    build_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_datagram,
    response_via,
)
from alarmd.store.db import Store, StoreError
from alarmd.store.registrar import (
    Binding,
    delete_binding_job,
    load_bindings,
    purge_expired_job,
    save_binding_job,
)
from alarmd.transports.listener import BurstListener

log = structlog.get_logger(__name__)

SCAIP_CONTENT_TYPE: Final = "application/scaip+xml"
ALLOW: Final = "REGISTER, MESSAGE, OPTIONS"
ACCEPTED_STATES: Final = frozenset({"accepted", "on_site", "dispatched", "closed"})
MAX_SERVER_TRANSACTIONS: Final = 100_000  # remembered for retransmissions; beyond: not cached
_KNOWN_METHODS: Final = frozenset({"REGISTER", "MESSAGE", "OPTIONS", "ACK", "INVITE", "BYE"})
T1: Final = 0.5
T2: Final = 4.0

SIP_REQUESTS: Final = Counter(
    "alarmd_sip_requests_total",
    "SIP requests received by the SCAIP receiver, by transport, method and response status.",
    ["transport", "method", "status"],
    registry=metrics.REGISTRY,
)
SIP_MRS_SENT: Final = Counter(
    "alarmd_sip_mrs_total",
    "SCAIP <mrs> replies sent, by snu.",
    ["snu"],
    registry=metrics.REGISTRY,
)
SIP_MRS_UNANSWERED: Final = Counter(
    "alarmd_sip_mrs_unanswered_total",
    "<mrs> MESSAGEs over UDP that got no SIP response before timer F.",
    registry=metrics.REGISTRY,
)
SIP_MRS_RETRANSMISSIONS: Final = Counter(
    "alarmd_sip_mrs_retransmissions_total",
    "<mrs> MESSAGEs sent again over UDP because no SIP response came within the timer.",
    registry=metrics.REGISTRY,
)
SIP_MRS_LATENCY: Final = Histogram(
    "alarmd_sip_message_to_mrs_seconds",
    "From a MESSAGE's arrival to its <mrs> being sent.",
    registry=metrics.REGISTRY,
)


class AckPolicy(enum.StrEnum):
    ON_COMMIT = "on_commit"
    HOLD_UNTIL_ACCEPTED = "hold_until_accepted"


@dataclass(frozen=True, slots=True)
class ScaipAccount:
    """One Digest user: a device (username = cid) or a group of devices sharing a password."""

    password: str = field(repr=False)
    ack_policy: AckPolicy = AckPolicy.ON_COMMIT
    mrs_in_200: bool = False
    # the controller ids this user may send for; None: any (a group account). A device
    # account that claims another unit's cid is refused with snu=3 and nothing is stored.
    cids: frozenset[str] | None = None


AccountLookup = Callable[[str], ScaipAccount | None]  # Digest username -> account
CaseState = Callable[[str, str], str | None]  # (cid, ref) -> the case's state, None if none


def store_case_state(store: Store) -> CaseState:
    """``case_state`` read from the store: the state of the case the alarm ``cid``+``ref``
    opened or joined (intake's de-duplication key ``scaip:cid:ref``), None while there is
    none. A synchronous read on the writer's connection (``read_now``): the receiver calls
    it on the event loop for every HOLD-policy alarm and re-send."""

    def case_state(cid: str, ref: str) -> str | None:
        # through events_source (protocol, source): the controller's own events, newest
        # first; dedup_key has no index of its own (store/recent.py)
        rows = store.writer.read_now(
            "SELECT c.state FROM events e JOIN cases c ON c.id = e.case_id"
            " WHERE e.protocol = ? AND e.source = ? AND e.dedup_key = ?"
            " ORDER BY e.received_at DESC LIMIT 1",
            (scaip.PROTOCOL, cid, f"{scaip.PROTOCOL}:{cid}:{ref}"),
        )
        return str(rows[0][0]) if rows else None

    return case_state


@dataclass(frozen=True, slots=True)
class SipSettings:
    host: str = "127.0.0.1"
    port: int = 5060  # UDP and TCP
    tls_port: int = 5061
    tls_cert: str | None = None  # TLS is served only when both are given
    tls_key: str | None = None
    realm: str = "alarmd"
    domain: str = "alarmd.local"  # our host part in From of the <mrs> MESSAGE
    nonce_ttl: float = 300.0
    min_expires: int = 60
    max_expires: int = 3600
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_in_flight: int = 10000  # MESSAGEs waiting for a commit before answering BUSY
    idle_timeout: float = 600.0  # stream connections without traffic are closed
    max_connections: int = 20000  # TCP and TLS together; beyond it new ones are closed
    heartbeat_minutes: int | None = None  # hbi for devices that sent hbo=001
    sweep_interval: float = 5.0  # event-loop seconds between sweeps of idle state
    binding_purge_interval: float = 60.0  # clock seconds between deletions of expired bindings
    t1: float = T1
    t2: float = T2


class _Sender:
    """Where responses to one request go: a stream connection or a UDP source."""

    __slots__ = ("host", "port", "transport_name", "write")

    def __init__(
        self, transport_name: str, host: str, port: int, write: Callable[[bytes], None]
    ) -> None:
        self.transport_name = transport_name
        self.host = host
        self.port = port
        self.write = write


_URI_HOSTPORT_RE = re.compile(r"sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?", re.I)
_ANGLE_RE = re.compile(r"<([^>]*)>")
_EXPIRES_PARAM_RE = re.compile(r";\s*expires\s*=\s*(\d+)", re.I)


def _uri_of(value: str) -> str:
    """The URI in a From/To/Contact value (angle brackets or bare, parameters dropped)."""
    m = _ANGLE_RE.search(value)
    if m is not None:
        return m.group(1).strip()
    return value.split(";", 1)[0].strip()


def _aor(value: str) -> str:
    """Address of record: scheme, user and host of a URI, without port or parameters."""
    uri = _uri_of(value).split(";", 1)[0]
    m = re.fullmatch(r"(sips?):(?:([^@]*)@)?(\[[^\]]+\]|[^:]+)(?::\d+)?", uri, re.I)
    if m is None:
        return uri
    user = f"{m.group(2)}@" if m.group(2) else ""
    return f"{m.group(1).lower()}:{user}{m.group(3).lower()}"


def _user_of(aor: str) -> str | None:
    """The user part of an address of record ("sip:123456@host" -> "123456"), None if none."""
    _scheme, sep, rest = aor.partition(":")
    if not sep or "@" not in rest:
        return None
    return rest.rsplit("@", 1)[0]


def _log_purge(future: asyncio.Future[int]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.error("sip_bindings_purge_failed", error=str(error))
    elif future.result():
        log.info("sip_bindings_purged", count=future.result())


def heartbeat_interval(base_minutes: int, cid: str, spread: float = 0.1) -> int:
    """``hbi`` for one device: the base spread by up to ``spread`` per device (stable per cid),
    so that heartbeats of devices installed together do not synchronise."""
    digest = hashlib.blake2b(cid.encode(), digest_size=4).digest()
    fraction = int.from_bytes(digest, "big") / 0xFFFFFFFF * 2 - 1  # -1 .. 1
    value = round(base_minutes * (1 + spread * fraction))
    return max(1, min(1440, value))


class _ClientTx:
    """An outgoing <mrs> MESSAGE over UDP: retransmitted until answered or timer F."""

    __slots__ = ("address", "data", "deadline", "handle", "interval")

    def __init__(self, data: bytes, address: tuple[str, int], interval: float, deadline: float):
        self.data = data
        self.address = address
        self.interval = interval
        self.deadline = deadline
        self.handle: asyncio.TimerHandle | None = None


class SipReceiver:
    """The SCAIP-over-SIP receiver: sockets, registrar, Digest, <mrs> delivery."""

    def __init__(
        self,
        *,
        intake: Intake,
        store: Store,
        clock: Clock,
        accounts: AccountLookup,
        settings: SipSettings,
        nonce_secret: bytes | None = None,
        case_state: CaseState | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.intake = intake
        self.store = store
        self.clock = clock
        self.accounts = accounts
        self.settings = settings
        self.case_state = case_state
        self.randbytes = randbytes
        # a fresh secret per start: old nonces then end as stale=true, which devices retry
        self.auth = DigestAuthenticator(
            settings.realm,
            nonce_secret or randbytes(32),
            timedelta(seconds=settings.nonce_ttl),
            randbytes=randbytes,
        )
        self.nonce_counts = NonceCounts()
        self.bindings: dict[str, Binding] = {}
        self.port = settings.port
        self.tls_port: int | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._listener: BurstListener | None = None
        self._tls_server: asyncio.Server | None = None
        self._connections: set[_StreamConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server_tx: dict[str, tuple[bytes | None, float]] = {}
        self._client_tx: dict[str, _ClientTx] = {}
        self._in_flight = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._last_purge: float | None = None
        self._warned_no_case_state = False
        # supervision's ``seen``: (protocol, cid) for every authenticated SCAIP request
        self.heard: Callable[[str, str], object] | None = None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the bindings, bind UDP and TCP on one port (ephemeral if 0), TLS if configured."""
        loop = asyncio.get_running_loop()
        for binding in await load_bindings(self.store.reader, self.clock.now()):
            self.bindings[binding.aor] = binding
        host = self.settings.host
        for _attempt in range(20):
            listener = BurstListener(
                host, self.settings.port, lambda: _StreamConnection(self, "tcp"), name="sip"
            )
            self.port = listener.open()
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, self.port)
                )
            except OSError:
                listener.close()
                if self.settings.port:
                    raise
                continue
            self._listener = listener
            self._udp = udp
            break
        else:  # pragma: no cover - twenty ephemeral ports all taken for UDP
            raise OSError("could not bind TCP and UDP to one port")
        self._listener.start()
        if self.settings.tls_cert and self.settings.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
            self._tls_server = await loop.create_server(
                lambda: _StreamConnection(self, "tls"),
                host,
                self.settings.tls_port,
                ssl=context,
            )
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())
        log.info("sip_listening", host=host, port=self.port, tls_port=self.tls_port)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._tls_server is not None:
            self._tls_server.close()
        for tx in self._client_tx.values():
            if tx.handle is not None:
                tx.handle.cancel()
        self._client_tx.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.close()
        if self._udp is not None:
            self._udp.close()
        if self._tls_server is not None:
            await self._tls_server.wait_closed()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            self.purge_expired_bindings()
            now = self.clock.monotonic()
            for key, (_, at) in list(self._server_tx.items()):
                if now - at > 32.0:
                    del self._server_tx[key]
            for conn in list(self._connections):
                if now - conn.last_seen > self.settings.idle_timeout:
                    conn.close()

    def purge_expired_bindings(self, *, force: bool = False) -> asyncio.Future[int] | None:
        """Forget the bindings that have expired and delete them from ``sip_bindings``; at
        most once per ``binding_purge_interval`` of clock time unless ``force``. Returns the
        writer's future (the number of rows deleted), or None when it was not yet time."""
        now_mono = self.clock.monotonic()
        last = self._last_purge
        if (
            not force
            and last is not None
            and now_mono - last < self.settings.binding_purge_interval
        ):
            return None
        self._last_purge = now_mono
        now = self.clock.now()
        for aor in [a for a, b in self.bindings.items() if b.expires_at <= now]:
            del self.bindings[aor]
        future = self.store.writer.enqueue(purge_expired_job(now))
        future.add_done_callback(_log_purge)
        return future

    # --- receiving ----------------------------------------------------------------------

    def received(self, item: SipRequest | SipResponse, sender: _Sender) -> None:
        if isinstance(item, SipResponse):
            self._response_received(item)
            return
        branch = None
        key: str | None = None
        with contextlib.suppress(SipError):
            branch = item.top_via.branch
        if branch is not None:
            key = f"{branch}|{item.method}|{sender.host}:{sender.port}"
            cached = self._server_tx.get(key)
            if cached is not None:
                if cached[0] is not None:
                    sender.write(cached[0])  # a retransmission: the same final response
                return  # still in progress: the first copy will be answered
            if len(self._server_tx) < MAX_SERVER_TRANSACTIONS:
                self._server_tx[key] = (None, self.clock.monotonic())
            else:
                key = None  # a flood of new branches: answer, but remember nothing
        task = asyncio.get_running_loop().create_task(self._handle(item, sender, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def refuse(self, error: SipError, sender: _Sender) -> None:
        """A message that did not parse: answer it if we can."""
        log.info(
            "sip_bad_message",
            reason=error.reason,
            detail=error.detail[:80],
            peer=f"{sender.host}:{sender.port}",
        )
        if error.request is not None and error.status is not None:
            try:
                self._respond(error.request, sender, error.status, key=None)
            except Exception:  # the head is too broken to answer (no usable Via)
                log.info("sip_bad_message_unanswerable", reason=error.reason)

    def _response_received(self, response: SipResponse) -> None:
        vias = response.headers.get("Via")
        if vias is None:
            return
        m = re.search(r";\s*branch=([^;,\s]+)", vias, re.I)
        if m is None:
            return
        tx = self._client_tx.pop(m.group(1), None)
        if tx is not None and tx.handle is not None:
            tx.handle.cancel()

    def _respond(
        self,
        request: SipRequest,
        sender: _Sender,
        status: int,
        *,
        key: str | None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        via = response_via(request.top_via, sender.host, sender.port)
        data = build_response(
            request,
            status,
            headers=headers or [],
            body=body,
            to_tag=new_tag(self.randbytes) if status > 100 else None,
            top_via=via,
        )
        sender.write(data)
        if key is not None:
            self._server_tx[key] = (data, self.clock.monotonic())
        method = request.method if request.method in _KNOWN_METHODS else "other"
        SIP_REQUESTS.labels(sender.transport_name, method, str(status)).inc()

    async def _handle(self, request: SipRequest, sender: _Sender, key: str | None) -> None:
        try:
            if request.method == "OPTIONS":
                self._respond(request, sender, 200, key=key, headers=[("Allow", ALLOW)])
            elif request.method == "REGISTER":
                await self._register(request, sender, key)
            elif request.method == "MESSAGE":
                await self._message(request, sender, key)
            elif request.method == "ACK":
                return
            else:
                self._respond(request, sender, 405, key=key, headers=[("Allow", ALLOW)])
        except SipError as error:
            self._server_tx.pop(key or "", None)
            if error.status is not None:
                self._respond(request, sender, error.status, key=key)
        except Exception:
            log.exception("sip_request_failed", method=request.method)
            self._respond(request, sender, 500, key=key)

    def _authenticate(
        self, request: SipRequest, sender: _Sender, key: str | None
    ) -> tuple[str, ScaipAccount] | None:
        found: dict[str, ScaipAccount] = {}

        def password(username: str) -> str | None:
            account = self.accounts(username)
            if account is None:
                return None
            found[username] = account
            return account.password

        result = self.auth.verify(
            request.method,
            request.headers.get("Authorization"),
            self.clock.now(),
            password,
            self.nonce_counts,
        )
        if result.ok and result.username is not None:
            return result.username, found[result.username]
        log.info(
            "sip_auth_refused",
            method=request.method,
            reason=result.reason,
            peer=f"{sender.host}:{sender.port}",
        )
        extra = []
        if result.www_authenticate is not None:
            extra.append(("WWW-Authenticate", result.www_authenticate))
        self._respond(request, sender, result.status or 403, key=key, headers=extra)
        return None

    async def _register(self, request: SipRequest, sender: _Sender, key: str | None) -> None:
        auth = self._authenticate(request, sender, key)
        if auth is None:
            return
        username, account = auth
        to = request.headers.get("To")
        contact = request.headers.get("Contact")
        if to is None:
            raise SipError("missing_header", 400, "To")
        aor = _aor(to)
        identity = _user_of(aor)
        if account.cids is not None and identity not in account.cids:
            log.warning(
                "sip_register_identity_refused",
                user=username,
                aor=aor,
                peer=f"{sender.host}:{sender.port}",
            )
            self._respond(request, sender, 403, key=key)
            return
        self.purge_expired_bindings()
        expires_text = request.headers.get("Expires")
        m = _EXPIRES_PARAM_RE.search(contact or "")
        expires = int(m.group(1)) if m else int(expires_text) if expires_text else 3600
        now = self.clock.now()
        if contact is None:  # a query: answer with the current binding
            binding = self.bindings.get(aor)
            headers = []
            if binding is not None:
                left = max(0, int((binding.expires_at - now).total_seconds()))
                headers.append(("Contact", f"<{binding.contact}>;expires={left}"))
            self._respond(request, sender, 200, key=key, headers=headers)
            return
        if contact.strip() == "*" or expires == 0:
            await self.store.writer.enqueue(delete_binding_job(aor))
            self.bindings.pop(aor, None)
            self._respond(request, sender, 200, key=key)
            return
        if expires < self.settings.min_expires:
            self._respond(
                request,
                sender,
                423,
                key=key,
                headers=[("Min-Expires", str(self.settings.min_expires))],
            )
            return
        expires = min(expires, self.settings.max_expires)
        contact_uri = _uri_of(contact)
        host, port = sender.host, sender.port
        if sender.transport_name == "udp" and not request.top_via.wants_rport:
            hm = _URI_HOSTPORT_RE.match(contact_uri)
            if hm is not None:
                host, port = hm.group(1).strip("[]"), int(hm.group(2) or 5060)
        binding = Binding(
            aor=aor,
            username=username,
            contact=contact_uri,
            transport=sender.transport_name,
            host=host,
            port=port,
            expires_at=now + timedelta(seconds=expires),
        )
        await self.store.writer.enqueue(save_binding_job(binding, now))
        self.bindings[aor] = binding
        self._respond(
            request,
            sender,
            200,
            key=key,
            headers=[("Contact", f"<{contact_uri}>;expires={expires}"), ("Expires", str(expires))],
        )

    async def _message(self, request: SipRequest, sender: _Sender, key: str | None) -> None:
        arrived = self.clock.monotonic()
        content_type = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        if content_type.lower() != SCAIP_CONTENT_TYPE:
            self._respond(request, sender, 415, key=key, headers=[("Accept", SCAIP_CONTENT_TYPE)])
            return
        auth = self._authenticate(request, sender, key)
        if auth is None:
            return
        username, account = auth
        result = scaip.handle_mrq(
            request.body,
            source=f"{username}@{sender.host}:{sender.port}",
            now=self.clock.now(),
        )
        if not result.ok:
            log.info("scaip_refused", snu=result.snu, reason=result.reason, user=username)
            self._answer(request, sender, key, account, result.reply_on_error, result.snu or 0)
            return
        mrq = result.mrq
        assert mrq is not None
        if account.cids is not None and mrq.cid not in account.cids:
            log.warning("scaip_cid_not_allowed", user=username, cid=mrq.cid)
            body = scaip.encode_mrs(mrq.ref, scaip.Snu.WRONG_DATA, ste="cid_not_allowed")
            self._answer(request, sender, key, account, body, scaip.Snu.WRONG_DATA)
            return
        if self.heard is not None:
            self.heard(scaip.PROTOCOL, mrq.cid)
        hbi = None
        if mrq.hbo == 1 and self.settings.heartbeat_minutes:
            hbi = heartbeat_interval(self.settings.heartbeat_minutes, mrq.cid)
        if result.events:
            if self._in_flight >= self.settings.max_in_flight:
                body = scaip.encode_mrs(mrq.ref, scaip.Snu.BUSY, ste="busy")
                self._answer(request, sender, key, account, body, scaip.Snu.BUSY)
                return
            self._in_flight += 1
            try:
                receipt: Receipt = await self.intake.submit_future(result.events)
            except StoreError as error:
                # no <mrs>: the device re-sends and de-duplication makes that safe
                log.error("scaip_store_failed", error=str(error), cid=mrq.cid, ref=mrq.ref)
                self._respond(request, sender, 500, key=key)
                self._server_tx.pop(key or "", None)
                return
            finally:
                self._in_flight -= 1
            del receipt
        snu = self._snu_after_commit(account, mrq)
        body = scaip.encode_mrs(mrq.ref, snu, hbi=hbi)
        self._answer(request, sender, key, account, body, snu)
        SIP_MRS_LATENCY.observe(max(0.0, self.clock.monotonic() - arrived))

    def _snu_after_commit(self, account: ScaipAccount, mrq: scaip.Mrq) -> int:
        if account.ack_policy is AckPolicy.ON_COMMIT or mrq.mty is not scaip.MessageType.MESSAGE:
            return scaip.Snu.OK
        if self.case_state is None:
            if not self._warned_no_case_state:
                log.warning("scaip_hold_without_case_state", note="answering snu=0 on commit")
                self._warned_no_case_state = True
            return scaip.Snu.OK
        state = self.case_state(mrq.cid, mrq.ref)
        return scaip.Snu.OK if state in ACCEPTED_STATES else scaip.Snu.HOLD

    def _answer(
        self,
        request: SipRequest,
        sender: _Sender,
        key: str | None,
        account: ScaipAccount,
        mrs: bytes,
        snu: int,
    ) -> None:
        SIP_MRS_SENT.labels(str(int(snu))).inc()
        if account.mrs_in_200:
            self._respond(
                request,
                sender,
                200,
                key=key,
                headers=[("Content-Type", SCAIP_CONTENT_TYPE)],
                body=mrs,
            )
            return
        self._respond(request, sender, 200, key=key)
        self._send_mrs(request, sender, mrs)

    # --- the <mrs> as a MESSAGE ------------------------------------------------------------

    def _send_mrs(self, request: SipRequest, sender: _Sender, mrs: bytes) -> None:
        from_value = request.headers.get("From") or ""
        device_aor = _aor(from_value)
        binding = self.bindings.get(device_aor)
        if binding is not None and binding.expires_at <= self.clock.now():
            binding = None  # expired: the MESSAGE's source is the better guess
        if sender.transport_name != "udp":
            target_uri, via_transport = _uri_of(from_value), sender.transport_name.upper()
            address = None
        elif binding is not None and binding.transport == "udp":
            target_uri, via_transport = binding.contact, "UDP"
            address = (binding.host, binding.port)
        else:
            target_uri, via_transport = _uri_of(from_value), "UDP"
            address = (sender.host, sender.port)
        if not target_uri.lower().startswith(("sip:", "sips:")):
            target_uri = f"sip:{sender.host}:{sender.port}"
        branch = new_branch(self.randbytes)
        local_port = self.port if via_transport != "TLS" else (self.tls_port or self.port)
        data = build_request(
            "MESSAGE",
            target_uri,
            headers=[
                (
                    "Via",
                    f"SIP/2.0/{via_transport} {self.settings.host}:{local_port};branch={branch}",
                ),
                ("Max-Forwards", "70"),
                ("From", f"<sip:alarmd@{self.settings.domain}>;tag={new_tag(self.randbytes)}"),
                ("To", f"<{_uri_of(from_value) or target_uri}>"),
                ("Call-ID", new_call_id(self.settings.domain, self.randbytes)),
                ("CSeq", "1 MESSAGE"),
                ("Content-Type", SCAIP_CONTENT_TYPE),
            ],
            body=mrs,
        )
        if address is None:
            sender.write(data)  # streams are reliable: no retransmission
            return
        if self._udp is None:
            return
        settings = self.settings
        tx = _ClientTx(data, address, settings.t1, self.clock.monotonic() + 64 * settings.t1)
        self._client_tx[branch] = tx
        self._udp.sendto(data, address)
        self._arm(branch, tx)

    def _arm(self, branch: str, tx: _ClientTx) -> None:
        loop = asyncio.get_running_loop()
        tx.handle = loop.call_later(tx.interval, self._retransmit, branch)

    def _retransmit(self, branch: str) -> None:
        tx = self._client_tx.get(branch)
        if tx is None or self._udp is None:
            return
        if self.clock.monotonic() >= tx.deadline or tx.interval * 2 > 64 * self.settings.t1:
            del self._client_tx[branch]
            SIP_MRS_UNANSWERED.inc()
            log.warning("scaip_mrs_unanswered", address=f"{tx.address[0]}:{tx.address[1]}")
            return
        self._udp.sendto(tx.data, tx.address)
        SIP_MRS_RETRANSMISSIONS.inc()
        tx.interval = min(tx.interval * 2, self.settings.t2)
        self._arm(branch, tx)


# --- sockets --------------------------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: SipReceiver) -> None:
        self.receiver = receiver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = str(addr[0]), int(str(addr[1]))
        transport = self.transport
        assert transport is not None

        def write(reply: bytes) -> None:
            transport.sendto(reply, (host, port))

        sender = _Sender("udp", host, port, write)
        try:
            item = parse_datagram(data, max_message_bytes=self.receiver.settings.max_message_bytes)
        except SipError as error:
            self.receiver.refuse(error, sender)
            return
        if isinstance(item, KeepAlive):
            return
        self.receiver.received(item, sender)


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection: a framing parser, every message handled as it completes."""

    def __init__(self, receiver: SipReceiver, transport_name: str) -> None:
        self.receiver = receiver
        self.transport_name = transport_name
        self.parser = SipStreamParser(receiver.settings.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.sender: _Sender | None = None
        self.last_seen = receiver.clock.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.sender = _Sender(self.transport_name, str(peer[0]), int(peer[1]), self._write)
        if len(self.receiver._connections) >= self.receiver.settings.max_connections:
            log.warning("sip_connection_refused_at_limit", peer=str(peer[0]))
            self.transport.close()
            return
        self.receiver._connections.add(self)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.receiver.clock.monotonic()
        sender = self.sender
        assert sender is not None
        for item in self.parser.feed(data):
            if isinstance(item, KeepAlive):
                self._write(KEEPALIVE_PONG)
            elif isinstance(item, SipError):
                self.receiver.refuse(item, sender)
                if item.fatal:
                    self.close()
                    return
            else:
                self.receiver.received(item, sender)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver._connections.discard(self)
        self.transport = None
