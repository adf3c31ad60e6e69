"""Real counterparts for the sink tests: a mosquitto broker, an MQTT subscriber and a webhook receiver.

``Broker`` runs Debian's mosquitto on a free localhost port from a generated config (anonymous, with a password
file, or with TLS certificates made by openssl), and can be stopped and started again on the same port (an
outage). ``Subscriber`` collects what a QoS 1 subscription receives. ``Receiver`` is an HTTP server that checks
each request's HMAC signature and can be told to answer 500 for its next N requests, or to never answer at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")


def need_mosquitto(passwords: bool = False) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto not found (apt-get install mosquitto; .ci/run installs it)")
    if passwords and MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")


def need_openssl() -> None:
    if OPENSSL is None:
        pytest.skip("openssl not found (apt-get install openssl)")


def wait_for(check: Any, timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``check()`` until it returns something truthy; fail the test naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class Certificates:
    """A throw-away CA with a server certificate for 127.0.0.1/localhost and a client certificate, made by openssl."""

    def __init__(self, folder: Path) -> None:
        need_openssl()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca, self.ca_key = folder / "ca.crt", folder / "ca.key"
        self.server, self.server_key = folder / "server.crt", folder / "server.key"
        self.client, self.client_key = folder / "client.crt", folder / "client.key"
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", "/CN=zsad test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self._leaf("server", "localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self._leaf("client", "zsad-client", "clientAuth", "")

    def _leaf(self, name: str, cn: str, usage: str, extra: str) -> None:
        key, csr, crt = self.folder / f"{name}.key", self.folder / f"{name}.csr", self.folder / f"{name}.crt"
        ext = self.folder / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n{extra}"
        )
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")  # fmt: skip
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                      "-out", crt, "-days", "2", "-extfile", ext)  # fmt: skip

    @staticmethod
    def _openssl(*args: Any) -> None:
        res = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"openssl {args[0]} failed: {res.stderr}"


class Broker:
    """mosquitto on 127.0.0.1:<free port>; ``stop()`` and ``start()`` again keep the port (and, with
    ``persistence``, the persistent sessions of its subscribers)."""

    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        certs: Certificates | None = None,
        require_certificate: bool = False,
        persistence: bool = False,
    ) -> None:
        need_mosquitto(passwords=bool(users))
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.host = "127.0.0.1"
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to the mosquitto user, who cannot read pytest's 0700 folders
        lines += [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}"]
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        if users:
            pw = folder / "passwords"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if certs is not None:
            lines += [f"cafile {certs.ca}", f"certfile {certs.server}", f"keyfile {certs.server_key}"]
            lines.append(f"require_certificate {'true' if require_certificate else 'false'}")
        lines += ["log_dest stderr", "log_type error", "log_type warning", "log_type notice"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=log, stderr=log)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > end:
                    self.stop()
                    raise AssertionError(f"mosquitto not listening after {timeout:g} s") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Subscriber:
    """A QoS 1 subscription collecting (topic, payload dict, retain) in arrival order; reconnects by itself.

    ``client_id`` with ``clean=False`` keeps a persistent session (with a persistent broker, messages published while
    it was away are kept for it).
    """

    def __init__(
        self,
        broker: Broker,
        topic: str = "#",
        *,
        client_id: str = "",
        clean: bool = True,
        username: str | None = None,
        password: str | None = None,
        certs: Certificates | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connects = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        if username is not None:
            c.username_pw_set(username, password)
        if certs is not None:
            c.tls_set(ca_certs=str(certs.ca), certfile=str(certs.client), keyfile=str(certs.client_key))
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        self.client = c
        c.connect(broker.host, broker.port, keepalive=10)
        c.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def received(self) -> list[tuple[str, dict[str, Any], bool]]:
        with self.lock:
            return list(self.messages)

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any], bool]]:
        """Wait for ``n`` messages, then a moment more so that an extra (duplicate) one would be seen too."""
        wait_for(lambda: len(self.received()) >= n, timeout, f"{n} MQTT messages (have {len(self.received())})")
        time.sleep(0.3)
        return self.received()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """A webhook endpoint on 127.0.0.1:<free port>.

    Every request is checked: a wrong or missing signature (when a secret is set) is answered 401 and counted in
    ``bad_signatures``. ``fail_next(n)`` answers the next n good requests with 500; ``hang = True`` makes it read the
    request and never answer. ``received`` holds the accepted requests' (headers, body dict), in arrival order.
    """

    def __init__(self, secret: bytes | None = None, path: str = "/hook") -> None:
        self.secret = secret
        self.path = path
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.requests = 0
        self.failures = 0
        self.bad_signatures = 0
        self.hang = False
        self._fail = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer(self.path, dict(self.headers.items()), body)
                if status is None:
                    receiver.release.wait(30)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, n: int) -> None:
        with self.lock:
            self._fail = n

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int | None:
        with self.lock:
            self.requests += 1
            if self.hang:
                return None
            if self.secret is not None:
                want = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(headers.get("X-Zsad-Signature", ""), want):
                    self.bad_signatures += 1
                    return 401
            if self._fail > 0:
                self._fail -= 1
                self.failures += 1
                return 500
            self.received.append(({**headers, "path": path}, json.loads(body)))
            return 200

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [b for _, b in self.received]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
