"""Sinks: where a station's decisions go besides its own history — webhooks, MQTT topics, JSON-lines files.

A sink is one URL. zsad's own options for it go in the URL's *fragment* (after ``#``, query-string syntax): a
fragment is never sent to a server, so a webhook's own query string reaches it untouched.

``http://…`` / ``https://…``
    A webhook: one HTTP POST per event, body the compact JSON of the event (``Content-Type: application/json``).
    ``X-Zsad-Event`` carries the event's ``event_id`` (the payload's own key, which the service sets to the
    inspection's uid): a receiver that keeps the ids it has seen drops the rare duplicate (below). With
    ``secret_env=VAR``, ``X-Zsad-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes under the
    secret held in the environment variable VAR (the secret itself never appears in a URL, a name or a log).
    ``timeout=SECONDS`` (default 5). A 2xx answer delivers; any other status, a refused connection or a timeout is
    a failure, retried later. Redirects are not followed (a 3xx is a failure: say the final URL).
``mqtt://[user[:password]@]host[:port]/topic/template``, ``mqtts://…``
    MQTT 3.1.1 (paho), TLS for mqtts; default ports 1883 and 8883. The URL path is the topic, with ``{profile}``,
    ``{label}`` (anomalous, normal or none), ``{station}`` and ``{source}`` filled from the event (a missing value
    is ``none``; ``/``, ``+`` and ``#`` inside a value become ``_`` so a value cannot add topic levels). Options:
    ``qos=0|1|2`` (default 1), ``retain=0|1``, ``client_id=…`` (default ``zsad-`` and random hex),
    ``password_env=VAR`` (the password from the environment instead of the URL), ``timeout=SECONDS`` (default 5:
    connecting, and waiting for the broker's acknowledgement); TLS: ``ca=PATH`` (else the system's CAs),
    ``cert=PATH``, ``key=PATH`` (a client certificate), ``insecure=1`` (the chain is still checked, the host name
    is not).
``file:PATH``, ``file:///abs/path``
    JSON lines appended to PATH, flushed and fsynced once per batch. When a line would take the file past
    ``max_bytes`` (default 100000000) it is rotated first: PATH → PATH.1 → … → PATH.<backups> (``backups``, default
    5; the oldest is dropped; 0 keeps no old file). The folder must exist. One process writes one file.

Options of every kind: ``only=anomalous|normal|decided`` (decided: any event with a label), ``min_score=X`` (score
≥ X), ``profile=A,B`` (only these profiles), ``name=ALIAS``. A sink's name is how its events are kept in the
station's outbox (and shown in stats and metrics): by default the URL without its fragment and without any
password. A token in a webhook's query string *is* part of that default name, so give such a sink a ``name=``.
Renaming a sink orphans the events still queued under its old name.

Delivery guarantees. The service queues an event for every sink that ``wants`` it in the same transaction as the
decision (``Station.record(events=...)``), so an event exists exactly when its decision does, and the outbox, not
memory, is the state: events queued before a crash or restart are sent by the next ``Delivery`` on the same
database. ``Delivery`` sends each sink's events in outbox order, a batch at a time, and marks the acknowledged
prefix delivered; the first failed event is retried after a back-off of 0.5 s doubling per failed attempt up to
``max_backoff_s`` (plus up to 10 % jitter), and nothing of that sink overtakes it, so each sink sees its events in
order. A sink known to be down (an MQTT broker that is not connected; its client reconnects by itself, every 1 to
5 s) is instead retried every second, which costs no network traffic, so its events flow within seconds of its
return. A sink that is down holds up only itself: every sink has its own thread, and scoring only writes the
outbox. Delivery is *at-least-once*: a crash (or a lost acknowledgement) between the sink's acknowledgement and
the outbox's commit sends that event again, so consumers that must not count twice dedupe on ``event_id``. In the
normal path, and when an MQTT broker is down for a while and comes back, each event reaches a QoS 1 subscriber
exactly once: while the broker is unreachable nothing is handed to paho (which would queue it and resend it after
reconnecting, besides the outbox's own retry), and a client that was handed messages it could not confirm is
discarded with them.

An event a sink refuses for good (a webhook that answers 400 to it every time) holds back that sink's later events
until the cause is fixed (losing it would be worse); the stats show it (the oldest pending event's age, the last
error). Each server delivers only the events of its own decisions (the outbox row names the station), so servers
sharing one PostgreSQL station with the same sinks never send an event twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import secrets
import ssl
import string
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

from zsad._version import __version__
from zsad.errors import ZsadInputError, one_line

if TYPE_CHECKING:
    import httpx
    from paho.mqtt.reasoncodes import ReasonCode

    from zsad.store import Station

log = logging.getLogger("zsad.sinks")

Only = Literal["anomalous", "normal", "decided"]
ONLY: tuple[str, ...] = ("anomalous", "normal", "decided")
COMMON = ("only", "min_score", "profile", "name")
WEBHOOK_OPTIONS = (*COMMON, "secret_env", "timeout")
MQTT_OPTIONS = (*COMMON, "qos", "retain", "client_id", "password_env", "timeout", "ca", "cert", "key", "insecure")
FILE_OPTIONS = (*COMMON, "max_bytes", "backups")
TOPIC_FIELDS = ("profile", "label", "station", "source")
MAX_NAME = 255  # the outbox's sink column
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_BYTES = 100_000_000
DEFAULT_BACKUPS = 5
# While a sink says it cannot take anything (a broker that is not connected), its head event is retried at least
# this often: the check costs no network traffic, and events then flow within about a second of the broker's return
# instead of after an exponential back-off that grew during the outage.
NOT_READY_RETRY_S = 1.0
# The MQTT client's own reconnect attempts: 1 s, doubling, at most this (a returned broker is found within it).
RECONNECT_MAX_S = 5
# A failing database (or a sink that raises) is retried after idle_s, doubling, at most this.
DB_RETRY_MAX_S = 10.0


# -- filters and names ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """Which events a sink takes; every field None (or empty) takes all."""

    only: Only | None = None
    min_score: float | None = None
    profiles: tuple[str, ...] = ()

    def wants(self, payload: dict[str, Any]) -> bool:
        """True when the event passes every condition (a missing score fails ``min_score``)."""
        label = payload.get("label")
        if self.only == "decided" and label is None:
            return False
        if self.only in ("anomalous", "normal") and label != self.only:
            return False
        if self.min_score is not None:
            score = payload.get("score")
            if not isinstance(score, int | float) or isinstance(score, bool) or not score >= self.min_score:
                return False
        return not self.profiles or payload.get("profile") in self.profiles

    def describe(self) -> dict[str, Any]:
        """The filter as plain JSON values."""
        return {"only": self.only, "min_score": self.min_score, "profiles": list(self.profiles)}


def redact(url: str, mask: str = "***") -> str:
    """``url`` without its fragment, any password replaced by ``mask`` (removed with its colon when ``mask`` is "")."""
    base = url.partition("#")[0]
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return base
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}{':' + mask if mask else ''}@{hostport}{slash}{path}"


class _Options:
    """A fragment's options, taken one by one, so that whatever is left over is reported as unknown."""

    def __init__(self, url: str, fragment: str, known: Sequence[str]) -> None:
        self.url = url
        self.known = known
        self.values: dict[str, str] = {}
        for part in fragment.split("&"):
            if not part:
                continue
            key, eq, value = part.partition("=")
            key, value = unquote_plus(key), unquote_plus(value)
            if not eq:
                raise self.error(f"option {key!r} needs a value ({key}=...)")
            if key in self.values:
                raise self.error(f"option {key!r} given twice")
            self.values[key] = value
        unknown = [k for k in self.values if k not in known]
        if unknown:
            raise self.error(f"unknown option {unknown[0]!r} (known: {', '.join(known)})")

    def error(self, problem: str) -> ZsadInputError:
        """The one-line error about this sink, its password redacted."""
        return ZsadInputError(f"sink {redact(self.url)}: {' '.join(problem.split())}")

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def number(self, key: str, default: float, *, positive: bool = False, high: float = math.inf) -> float:
        """A finite number, above 0 when ``positive`` (timeouts), at most ``high``."""
        raw = self.values.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(f"{key}={raw!r}: not a number") from None
        if not math.isfinite(value) or (positive and value <= 0) or value > high:
            bound = "a number above 0" if positive else "a finite number"
            raise self.error(f"{key}={raw!r}: must be {bound}{'' if high == math.inf else f' up to {high:g}'}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int | None = None) -> int:
        raw = self.values.get(key)
        if raw is None:
            return default
        if not raw.strip().isdigit():
            raise self.error(f"{key}={raw!r}: not a whole number")
        value = int(raw)
        if value < low or (high is not None and value > high):
            bound = f"{low} to {high}" if high is not None else f"at least {low}"
            raise self.error(f"{key}={raw!r}: must be {bound}")
        return value

    def flag(self, key: str) -> bool:
        raw = self.values.get(key)
        if raw is None:
            return False
        if raw not in ("0", "1"):
            raise self.error(f"{key}={raw!r}: must be 0 or 1")
        return raw == "1"

    def env(self, key: str) -> tuple[str, str] | None:
        """(variable, its value) for a ``*_env`` option; an unset or empty variable is refused now, not at send time."""
        var = self.values.get(key)
        if var is None:
            return None
        if not var:
            raise self.error(f"{key}=: name an environment variable")
        value = os.environ.get(var)
        if not value:
            raise self.error(f"{key}={var}: the environment variable {var} is {'empty' if value == '' else 'not set'}")
        return var, value

    def path(self, key: str) -> Path | None:
        raw = self.values.get(key)
        if raw is None:
            return None
        p = Path(raw).expanduser().absolute()
        if not p.is_file():
            raise self.error(f"{key}={raw}: no such file")
        return p

    def common(self, default_name: str) -> tuple[str, Filter]:
        """The sink's name and filter."""
        only = self.values.get("only")
        if only is not None and only not in ONLY:
            raise self.error(f"only={only!r}: must be one of {', '.join(ONLY)}")
        min_score = None
        if "min_score" in self.values:
            min_score = self.number("min_score", 0.0)
        profiles: tuple[str, ...] = ()
        if "profile" in self.values:
            profiles = tuple(p.strip() for p in self.values["profile"].split(","))
            if not all(profiles):
                raise self.error(f"profile={self.values['profile']!r}: an empty profile name")
        name = self.values.get("name", default_name)
        if not name or len(name) > MAX_NAME or not name.isprintable():
            what = "longer than 255 characters" if len(name) > MAX_NAME else "empty or not printable"
            hint = ": give it a short one with #name=..." if "name" not in self.values else ""
            raise self.error(f"name {name[:60]!r}: {what}{hint}")
        return name, Filter(cast(Only | None, only), min_score, profiles)


def _body(payload: dict[str, Any]) -> bytes:
    """The event as sent: compact JSON, UTF-8 (the bytes a webhook's signature covers)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- sinks ----------------------------------------------------------------------------------------------------------


class Sink:
    """One destination of events (see the module doc); ``deliver`` is called from one thread at a time."""

    kind = ""

    def __init__(self, name: str, filt: Filter) -> None:
        self.name = name
        self.filter = filt
        # Called (from any thread) when the sink becomes able to take events again: Delivery wakes its thread.
        self.notify: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def wants(self, payload: dict[str, Any]) -> bool:
        """Whether an event with this payload is queued for this sink (the service asks before ``record``)."""
        return self.filter.wants(payload)

    def describe(self) -> dict[str, Any]:
        """Kind, name, filter and settings, never a secret."""
        return {"kind": self.kind, "name": self.name, "filter": self.filter.describe(), **self._settings()}

    def _settings(self) -> dict[str, Any]:
        return {}

    def open(self) -> None:
        """Start connecting, so that the first event does not wait for it (idempotent)."""

    def ready(self) -> str | None:
        """None when ``deliver`` may be tried now, else why not (one line); costs no network traffic."""
        return None

    def connection(self) -> str | None:
        """The connection's state for status pages (None: the kind keeps no connection)."""
        return None

    def deliver(self, payloads: list[dict[str, Any]]) -> tuple[int, str | None]:
        """Send these events in order: how many were acknowledged before the first failure, and its reason."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads (idempotent)."""


class WebhookSink(Sink):
    """HTTP POST of each event, one kept-alive client per sink."""

    kind = "webhook"

    def __init__(self, name: str, filt: Filter, url: str, timeout: float, secret: tuple[str, str] | None) -> None:
        super().__init__(name, filt)
        self.url = url
        self.timeout = timeout
        self._secret_env = None if secret is None else secret[0]
        self._secret = None if secret is None else secret[1].encode()
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _settings(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout, "signed": self._secret is not None, "secret_env": self._secret_env}

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    timeout=self.timeout, follow_redirects=False, headers={"User-Agent": f"zsad/{__version__}"}
                )
            return self._client

    def headers(self, payload: dict[str, Any], body: bytes) -> dict[str, str]:
        """The headers of one event: its id and, when a secret is set, the body's signature."""
        event_id = payload.get("event_id") or payload.get("uid") or hashlib.sha256(body).hexdigest()[:32]
        out = {"Content-Type": "application/json", "X-Zsad-Event": str(event_id)}
        if self._secret is not None:
            out["X-Zsad-Signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        return out

    def deliver(self, payloads: list[dict[str, Any]]) -> tuple[int, str | None]:
        """One POST per event, in order, stopping at the first that is not answered 2xx."""
        import httpx

        client = self._http()
        for i, p in enumerate(payloads):
            body = _body(p)
            try:
                r = client.post(self.url, content=body, headers=self.headers(p, body))
            except httpx.TimeoutException:
                return i, f"timeout after {self.timeout:g} s"
            except httpx.ConnectError as e:
                text = one_line(e)
                return i, "connection refused" if "refused" in text.lower() else f"cannot connect ({text})"
            except httpx.HTTPError as e:
                return i, f"{type(e).__name__}: {one_line(e)}"
            if not 200 <= r.status_code < 300:
                return i, f"HTTP {r.status_code}"
        return len(payloads), None

    def close(self) -> None:
        """Close the client's connections."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class FileSink(Sink):
    """JSON lines appended to one file, rotated by size."""

    kind = "file"

    def __init__(self, name: str, filt: Filter, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(name, filt)
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def _settings(self) -> dict[str, Any]:
        return {"path": str(self.path), "max_bytes": self.max_bytes, "backups": self.backups}

    def deliver(self, payloads: list[dict[str, Any]]) -> tuple[int, str | None]:
        """Append the batch and fsync it; a failure rolls the file back to its last fsync, so the count is exact."""
        lines = [_body(p) + b"\n" for p in payloads]
        done = 0  # lines fsynced
        synced = 0  # the current file's size at its last fsync
        f = None
        try:
            f = open(self.path, "ab")  # noqa: SIM115 (closed below, also on the error path)
            size = synced = f.tell()
            for i, line in enumerate(lines):
                if size > 0 and size + len(line) > self.max_bytes:
                    _sync(f)
                    synced, done = size, i
                    f.close()
                    self._rotate()
                    f = open(self.path, "ab")  # noqa: SIM115
                    size = synced = 0
                f.write(line)
                size += len(line)
            _sync(f)
            f.close()
            return len(lines), None
        except OSError as e:
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
                with contextlib.suppress(OSError):
                    os.truncate(self.path, synced)  # no half line for the retry to append after
            return done, one_line(e)

    def _rotate(self) -> None:
        """PATH → PATH.1 → … → PATH.<backups>, the oldest replaced; with no backups PATH is simply removed."""
        if self.backups == 0:
            self.path.unlink()
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        _sync_dir(self.path.parent)


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every system lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def topic_for(template: str, payload: dict[str, Any]) -> str:
    """The MQTT topic of one event: the template's placeholders filled, each value one topic level at most."""
    values = {}
    for k in TOPIC_FIELDS:
        v = payload.get(k)
        text = "none" if v is None or v == "" else str(v)
        values[k] = text.translate({ord("/"): "_", ord("+"): "_", ord("#"): "_", 0: "_"})
    return template.format(**values)


class _Connection:
    """One paho client and what its callbacks saw.

    A discarded client keeps its own state here, so its late callbacks cannot confuse the client that replaced it.
    """

    def __init__(self, sink: MqttSink) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.sink = sink
        self.cond = threading.Condition()
        self.connected = False
        self.ever_connected = False
        self.reason = f"connecting to {sink.host}:{sink.port}"
        self.started = time.monotonic()
        self.acked: set[int] = set()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=sink.client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        if sink.username is not None:
            client.username_pw_set(sink.username, sink.password)
        if sink.tls is not None:
            client.tls_set_context(sink.tls)
        client.connect_timeout = sink.timeout
        client.reconnect_delay_set(1, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        client.connect_async(sink.host, sink.port, keepalive=30)
        client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any) -> None:
        with self.cond:
            if reason_code.is_failure:
                self.connected = False
                self.reason = f"the broker refused the connection: {reason_code}"
            else:
                self.connected = self.ever_connected = True
                self.reason = "connected"
            self.cond.notify_all()
        if self.connected and self.sink.notify is not None:
            self.sink.notify()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with self.cond:
            self.connected = False
            self.reason = f"cannot connect to {self.sink.host}:{self.sink.port}"
            self.cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any) -> None:
        with self.cond:
            if self.connected:  # a refused CONNECT also ends here: keep the refusal as the reason
                self.reason = f"connection to {self.sink.host}:{self.sink.port} lost"
            self.connected = False
            self.cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    def fresh(self) -> bool:
        """Still within its first connection attempt's time (an event waits for it rather than failing)."""
        return not self.ever_connected and time.monotonic() - self.started < self.sink.timeout

    def wait_connected(self) -> bool:
        """Connected now, or (when fresh) once the first attempt succeeds within ``timeout``."""
        end = self.started + self.sink.timeout
        with self.cond:
            while not self.connected and not self.ever_connected:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.connected

    def wait_acked(self, mid: int, timeout: float) -> bool:
        """The broker acknowledged ``mid`` (QoS 0: it was written) within ``timeout``; False at once if disconnected."""
        end = time.monotonic() + timeout
        with self.cond:
            while mid not in self.acked:
                left = end - time.monotonic()
                if not self.connected or left <= 0:
                    return False
                self.cond.wait(left)
            self.acked.discard(mid)
            return True

    def close(self) -> None:
        """Disconnect and stop paho's thread; whatever paho still queued is dropped with the client."""
        with contextlib.suppress(Exception):  # a client that never connected, or a socket already gone
            self.client.disconnect()
        self.client.loop_stop()


class MqttSink(Sink):
    """Publishes each event to a topic made from the event; one connected client per sink (see the module doc)."""

    kind = "mqtt"

    def __init__(
        self,
        name: str,
        filt: Filter,
        *,
        host: str,
        port: int,
        topic: str,
        qos: int,
        retain: bool,
        client_id: str,
        username: str | None,
        password: str | None,
        password_env: str | None,
        tls: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        super().__init__(name, filt)
        self.host, self.port, self.topic = host, port, topic
        self.qos, self.retain, self.client_id = qos, retain, client_id
        self.username, self.password, self._password_env = username, password, password_env
        self.tls, self.timeout = tls, timeout
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _settings(self) -> dict[str, Any]:
        return {
            "broker": f"{self.host}:{self.port}",
            "tls": self.tls is not None,
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
            "client_id": self.client_id,
            "username": self.username,
            "password_env": self._password_env,
            "timeout_s": self.timeout,
        }

    def _connection(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"sink {self.name}: closed")
            if self._conn is None:
                self._conn = _Connection(self)
            return self._conn

    def open(self) -> None:
        """Start the client (it connects, and reconnects, in paho's thread)."""
        self._connection()

    def ready(self) -> str | None:
        """None while connected (or still making the first attempt), else why the broker cannot be reached."""
        conn = self._connection()
        if conn.connected or conn.fresh():
            return None
        return f"broker not connected ({conn.reason})"

    def connection(self) -> str | None:
        """connected, connecting, or disconnected and why."""
        with self._lock:
            conn = self._conn
        if conn is None:
            return "not started"
        if conn.connected:
            return "connected"
        return "connecting" if conn.fresh() else f"disconnected ({conn.reason})"

    def deliver(self, payloads: list[dict[str, Any]]) -> tuple[int, str | None]:
        """Publish the batch, then wait for the acknowledgements in order.

        Messages are pipelined (paho keeps up to 20 in flight). Anything handed to paho and not acknowledged
        discards the client: paho would otherwise resend it after reconnecting, while the outbox retries it too.
        """
        import paho.mqtt.client as mqtt

        conn = self._connection()
        if not conn.wait_connected():
            return 0, f"broker not connected ({conn.reason})"
        mids: list[int] = []
        reason: str | None = None
        handed = 0
        for p in payloads:
            if not conn.connected:
                reason = f"broker not connected ({conn.reason})"
                break
            try:
                topic, body = topic_for(self.topic, p), _body(p)
            except ValueError as e:
                reason = f"event not publishable: {one_line(e)}"
                break
            handed += 1
            try:
                info = conn.client.publish(topic, body, qos=self.qos, retain=self.retain)
            except (ValueError, OSError) as e:
                reason = f"publish failed: {one_line(e)}"
                break
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                reason = f"publish failed: {mqtt.error_string(info.rc)}"
                break
            mids.append(info.mid)
        acked = 0
        for mid in mids:
            if not conn.wait_acked(mid, self.timeout):
                if conn.connected:
                    reason = f"no acknowledgement from the broker within {self.timeout:g} s"
                else:
                    reason = f"broker not connected ({conn.reason})"
                break
            acked += 1
        if acked < handed:
            self._discard(conn)
        return acked, reason

    def _discard(self, conn: _Connection) -> None:
        """Replace the client; the old one is closed in the background (stopping paho's thread may take seconds)."""
        with self._lock:
            if self._conn is conn:
                self._conn = None if self._closed else _Connection(self)
        threading.Thread(target=conn.close, name="zsad-mqtt-close", daemon=True).start()

    def close(self) -> None:
        """Disconnect (waiting at most 2 s for paho's thread)."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            t = threading.Thread(target=conn.close, name="zsad-mqtt-close", daemon=True)
            t.start()
            t.join(2.0)


# -- parsing --------------------------------------------------------------------------------------------------------


def parse_sink(url: str) -> Sink:
    """The sink a URL describes (see the module doc); any problem is a one-line ``ZsadInputError``."""
    if not isinstance(url, str) or not url.strip():
        raise ZsadInputError("sink: an empty URL")
    url = url.strip()
    base, _, fragment = url.partition("#")
    scheme = base.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return _webhook(url, base, fragment)
    if scheme in ("mqtt", "mqtts"):
        return _mqtt(url, base, fragment, scheme)
    if scheme == "file":
        return _file(url, base, fragment)
    raise ZsadInputError(f"sink {redact(url)}: unknown kind (use http(s)://, mqtt(s)://, or file:)")


def parse_profile_sinks(urls: Iterable[str]) -> list[Sink]:
    """A profile's sinks: as ``parse_sinks``, but no password in a URL.

    A profile is data every server and the page read: secrets go in the environment (``#password_env=VAR``,
    ``#secret_env=VAR``).
    """
    urls = list(urls)
    for url in urls:
        if not isinstance(url, str):
            raise ZsadInputError(f"sinks: each is a URL string, not {type(url).__name__}")
        if redact(url, "") != url.partition("#")[0]:  # there was a password to take out
            raise ZsadInputError(
                f"sink {redact(url)}: a profile keeps no password (every server and the page read it); "
                "give it with #password_env=VAR"
            )
    return parse_sinks(urls)


def parse_sinks(urls: Iterable[str]) -> list[Sink]:
    """Every URL's sink; two with one name are refused (their events would be one queue)."""
    sinks: list[Sink] = []
    seen: set[str] = set()
    for url in urls:
        sink = parse_sink(url)
        if sink.name in seen:
            raise ZsadInputError(f"sink {redact(url)}: the name {sink.name!r} is taken by another sink (add #name=...)")
        seen.add(sink.name)
        sinks.append(sink)
    return sinks


def _split_url(opts: _Options, base: str) -> SplitResult:
    try:
        return urlsplit(base)
    except ValueError as e:
        raise opts.error(f"not a URL ({one_line(e)})") from None


def _webhook(url: str, base: str, fragment: str) -> WebhookSink:
    opts = _Options(url, fragment, WEBHOOK_OPTIONS)
    parts = _split_url(opts, base)
    if not parts.hostname:
        raise opts.error("no host")
    try:
        parts.port  # noqa: B018 (a bad port raises here, at parse time)
    except ValueError:
        raise opts.error("bad port") from None
    import httpx

    try:
        httpx.URL(base)
    except httpx.InvalidURL as e:
        raise opts.error(f"not a URL httpx can send to ({one_line(e)})") from None
    name, filt = opts.common(redact(base, ""))
    timeout = opts.number("timeout", DEFAULT_TIMEOUT_S, positive=True, high=3600)
    return WebhookSink(name, filt, base, timeout, opts.env("secret_env"))


def _mqtt(url: str, base: str, fragment: str, scheme: str) -> MqttSink:
    opts = _Options(url, fragment, MQTT_OPTIONS)
    parts = _split_url(opts, base)
    if parts.query:
        raise opts.error("an MQTT URL has no query string (zsad's options go after #)")
    host = parts.hostname
    if not host:
        raise opts.error("no broker host")
    try:
        port = parts.port or (8883 if scheme == "mqtts" else 1883)
    except ValueError:
        raise opts.error("bad port") from None
    topic = unquote(parts.path[1:])
    _check_topic(opts, topic)
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    from_env = opts.env("password_env")
    if from_env is not None:
        if password is not None:
            raise opts.error("a password in the URL and password_env: give one")
        password = from_env[1]
    if password is not None and not username:
        raise opts.error("a password without a user name")
    tls_options = [k for k in ("ca", "cert", "key", "insecure") if k in opts.values]
    tls = None
    if scheme == "mqtts":
        tls = _tls_context(opts)
    elif tls_options:
        raise opts.error(f"{tls_options[0]}= is a TLS option: use mqtts://")
    name, filt = opts.common(redact(base, ""))
    client_id = opts.get("client_id")
    if client_id is None:
        client_id = f"zsad-{secrets.token_hex(6)}"
    elif not client_id or len(client_id.encode()) > 65535:
        raise opts.error("client_id: must be 1 to 65535 bytes")
    return MqttSink(
        name,
        filt,
        host=host,
        port=port,
        topic=topic,
        qos=opts.integer("qos", 1, low=0, high=2),
        retain=opts.flag("retain"),
        client_id=client_id,
        username=username,
        password=password,
        password_env=None if from_env is None else from_env[0],
        tls=tls,
        timeout=opts.number("timeout", DEFAULT_TIMEOUT_S, positive=True, high=3600),
    )


def _check_topic(opts: _Options, topic: str) -> None:
    """A topic template publishable as given: known placeholders only, no wildcards, no NUL."""
    if not topic:
        raise opts.error("no topic (mqtt://host/some/topic)")
    try:
        parsed = list(string.Formatter().parse(topic))
    except ValueError as e:
        raise opts.error(f"topic {topic!r}: {one_line(e)} (a literal brace is written {{{{ or }}}})") from None
    for literal, field, spec, conversion in parsed:
        bad = next((c for c in ("+", "#", "\x00") if c in literal), None)
        if bad is not None:
            what = "the MQTT wildcard" if bad != "\x00" else "the character"
            raise opts.error(f"topic {topic!r}: {what} {bad!r} cannot be published to")
        if field is not None and (field not in TOPIC_FIELDS or spec or conversion):
            known = ", ".join("{" + f + "}" for f in TOPIC_FIELDS)
            raise opts.error(f"topic {topic!r}: unknown placeholder {{{field}}} (known: {known})")


def _tls_context(opts: _Options) -> ssl.SSLContext:
    """The client's TLS context, built now so that a bad certificate is a parse error, not a retry loop."""
    ca, cert, key = opts.path("ca"), opts.path("cert"), opts.path("key")
    if key is not None and cert is None:
        raise opts.error("key= without cert=")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None if ca is None else str(ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), None if key is None else str(key))
    except (ssl.SSLError, OSError) as e:
        raise opts.error(f"TLS: {one_line(e)}") from None
    if opts.flag("insecure"):
        ctx.check_hostname = False
    return ctx


def _file(url: str, base: str, fragment: str) -> FileSink:
    opts = _Options(url, fragment, FILE_OPTIONS)
    rest = base[len("file:") :]
    if rest.startswith("//"):
        parts = _split_url(opts, base)
        if parts.netloc not in ("", "localhost"):
            raise opts.error("only local files (file:PATH or file:///absolute/path)")
        raw = unquote(parts.path)
    else:
        raw = rest
    if not raw:
        raise opts.error("no path (file:PATH)")
    path = Path(raw).expanduser().absolute()
    if path.is_dir():
        raise opts.error(f"{path} is a folder: name a file in it")
    if not path.parent.is_dir():
        raise opts.error(f"folder {path.parent}: not found")
    name, filt = opts.common(base)
    max_bytes = opts.integer("max_bytes", DEFAULT_MAX_BYTES, low=1)
    backups = opts.integer("backups", DEFAULT_BACKUPS, low=0, high=1000)
    return FileSink(name, filt, path, max_bytes, backups)


# -- delivery -------------------------------------------------------------------------------------------------------


class Delivery:
    """Drains the outbox into the sinks: one daemon thread per sink, so a slow or dead sink holds up only itself.

    The outbox is the whole state (see the module doc). The sinks stay the caller's: ``stop`` does not close them.
    """

    def __init__(
        self,
        station: Station,
        sinks: Sequence[Sink],
        *,
        on_delivered: Callable[[str, list[float]], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        idle_s: float = 0.5,
        max_backoff_s: float = 60.0,
        batch: int = 100,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ZsadInputError(f"sinks: the name {next(n for n in names if names.count(n) > 1)!r} is given twice")
        if batch < 1 or idle_s <= 0 or max_backoff_s < 0:
            raise ValueError("Delivery: batch >= 1, idle_s > 0 and max_backoff_s >= 0")
        self.station = station
        self.sinks = list(sinks)
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        self.idle_s = idle_s
        self.max_backoff_s = max_backoff_s
        self.batch = batch
        self._stop = threading.Event()
        self._wakes = {s.name: threading.Event() for s in self.sinks}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._adding = threading.Lock()
        self._failing: dict[str, str] = {}  # sink name -> the reason of its current run of failures (for the log)

    def start(self) -> None:
        """Start connecting every sink and one thread each."""
        if self._started:
            raise RuntimeError("Delivery: already started")
        self._started = True
        for sink in self.sinks:
            self._launch(sink)

    def add(self, sink: Sink) -> Sink:
        """Deliver to ``sink`` too (a profile's sink, met at its first decision); the one of that name if known.

        Returns the sink events should name: a second sink of an existing name is closed and the first kept, so a
        name always has one thread and one order.
        """
        with self._adding:
            for known in self.sinks:
                if known.name == sink.name:
                    if known is not sink:
                        sink.close()
                    return known
            self.sinks.append(sink)
            self._wakes[sink.name] = threading.Event()
            if self._started:
                self._launch(sink)
        return sink

    def _launch(self, sink: Sink) -> None:
        sink.notify = self._wakes[sink.name].set
        try:
            sink.open()
        except Exception as e:  # noqa: BLE001 (its thread reports and retries)
            log.warning("sink %s: %s", sink.name, one_line(e))
        t = threading.Thread(target=self._run, args=(sink,), name=f"zsad-sink-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def wake(self) -> None:
        """Look for due events now (called after a ``record`` that queued some)."""
        for w in self._wakes.values():
            w.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, waiting at most ``timeout`` seconds in all (a sink mid-send may finish later)."""
        self._stop.set()
        self.wake()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def running(self) -> bool:
        """Every sink's thread is alive."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    def drain(self, timeout: float) -> bool:
        """Wait until none of these sinks has a pending event (True), or ``timeout`` seconds passed (False)."""
        sinks = list(self.sinks)
        end = time.monotonic() + timeout
        self.wake()
        while True:
            try:
                stats = self.station.outbox_stats()
                if all(stats.get(s.name, {}).get("pending", 0) == 0 for s in sinks):
                    return True
            except Exception as e:  # noqa: BLE001 (an unreachable database is "not drained yet")
                log.debug("drain: %s", one_line(e))
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per sink: its description, its outbox counts (``Station.outbox_stats``) and its connection."""
        stats = self.station.outbox_stats()
        empty = {"delivered": 0, "pending": 0, "oldest_pending_s": None, "failed_attempts_pending": 0,
                 "last_error": None}  # fmt: skip
        return {
            s.name: {**s.describe(), **stats.get(s.name, empty), "connection": s.connection()} for s in list(self.sinks)
        }

    def backoff(self, attempts: int) -> float:
        """Seconds before retrying an event that has failed ``attempts`` times before this failure."""
        return min(self.max_backoff_s, 0.5 * 2.0 ** min(attempts, 30)) * random.uniform(1.0, 1.1)

    # -- the threads ------------------------------------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        """One sink's loop: a batch while there is more, else wait for a wake or ``idle_s``; errors never end it."""
        wake = self._wakes[sink.name]
        errors = 0
        while not self._stop.is_set():
            wake.clear()
            try:
                more = self._pass(sink)
                errors = 0
            except Exception as e:  # noqa: BLE001 (the database unreachable, a sink's bug: log, wait, retry)
                errors += 1
                delay = max(self.idle_s, min(DB_RETRY_MAX_S, self.idle_s * 2.0 ** min(errors, 10)))
                log.warning("sink %s: %s (retrying in %.1f s)", sink.name, one_line(e), delay)
                self._stop.wait(delay)
                continue
            if not more:
                wake.wait(self.idle_s)

    def _pass(self, sink: Sink) -> bool:
        """Send one batch of ``sink``'s due events; True when more may be due right away."""
        why_not = sink.ready()
        if why_not is not None:
            head = self.station.outbox_due(sink.name, 1)
            if head:
                self._failed(sink, head[0], why_not, cap=NOT_READY_RETRY_S)
            return False
        rows = self.station.outbox_due(sink.name, self.batch)
        if not rows:
            return False
        try:
            n, reason = sink.deliver([r["payload"] for r in rows])
        except Exception as e:  # noqa: BLE001 (a sink must not raise; if it does, nothing counts as delivered)
            log.exception("sink %s: deliver raised", sink.name)
            n, reason = 0, f"{type(e).__name__}: {one_line(e)}"
        n = max(0, min(int(n), len(rows)))
        if n:
            self.station.outbox_delivered([r["id"] for r in rows[:n]])
            if self._failing.pop(sink.name, None) is not None:
                log.warning("sink %s: delivering again", sink.name)
            now = datetime.now(UTC)
            self._call(self.on_delivered, sink.name, [(now - r["created_at"]).total_seconds() for r in rows[:n]])
        if n < len(rows):
            self._failed(sink, rows[n], reason or f"only {n} of {len(rows)} events taken")
            return False
        return len(rows) == self.batch

    def _failed(self, sink: Sink, row: dict[str, Any], reason: str, cap: float | None = None) -> None:
        """Count the failed attempt and schedule the retry; the log says when a sink starts and stops failing."""
        delay = self.backoff(int(row["attempts"]))
        if cap is None and sink.ready() is not None:
            cap = NOT_READY_RETRY_S  # it failed because it is down: poll it cheaply (see NOT_READY_RETRY_S)
        if cap is not None:
            delay = min(delay, cap)
        self.station.outbox_failed(row["id"], reason, delay)
        if self._failing.get(sink.name) != reason:
            log.warning("sink %s: not delivering (%s); retrying", sink.name, reason)
        else:
            log.debug("sink %s: event %s not delivered (%s); retry in %.1f s", sink.name, row["id"], reason, delay)
        self._failing[sink.name] = reason
        self._call(self.on_failed, sink.name, reason)

    def _call(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 (a metrics callback must not stop delivery)
            log.exception("sink callback %r failed", callback)
