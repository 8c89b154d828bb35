"""A fault-injecting HTTP proxy between the project and the local S3 server (moto), as object stores misbehave at
scale: a share of requests answered `503 SlowDown` (S3's throttling reply) or with the connection reset.

    proxy = FaultyS3Proxy(upstream="http://127.0.0.1:PORT", fail_every=4)   # every 4th request fails
    proxy.start(); ... AWS_ENDPOINT_URL_S3 = proxy.url ...; proxy.stop()

Faults are chosen by a request counter, not at random, so a run sees the same faults every time: every
`fail_every`-th request fails, alternately with a 503 SlowDown and a connection reset (before any response byte,
as a load balancer drops a connection). `down_when(trigger, prefix)` takes the keys under a prefix down from a
known point of a run, `refuse(part)` fails every request for some keys, `up()` ends both. `faults` counts what was
injected.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>')
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class FaultyS3Proxy:
    def __init__(self, upstream: str, *, fail_every: int = 0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fail_every = fail_every
        self._trigger: str | None = None
        self._down_prefix: str | None = None
        self._refused: str | None = None
        self.is_down = False
        self.requests = 0
        self.faults = {"slowdown": 0, "reset": 0, "down": 0}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultyS3Proxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def down_when(self, trigger: str, prefix: str) -> None:
        """From the first request whose path contains `trigger`, every request for a key under `prefix`
        ("bucket/runs/x") fails: storage that goes down at a known point of a run and stays down."""
        with self._lock:
            self._trigger, self._down_prefix = trigger, "/" + prefix.strip("/")

    def refuse(self, part: str) -> None:
        """Every request whose path contains `part` fails, however often it is retried."""
        with self._lock:
            self._refused = part

    def up(self) -> None:
        with self._lock:
            self._trigger = self._down_prefix = self._refused = None
            self.is_down = False

    def decide(self, path: str) -> str | None:
        """The fault for this request ("slowdown", "reset", "down") or None to forward it."""
        key = path.split("?", 1)[0]
        with self._lock:
            self.requests += 1
            if self._trigger is not None and self._trigger in key:
                self.is_down = True
            if (self.is_down and key.startswith(self._down_prefix)) or (self._refused and self._refused in key):
                kind = "down"
            elif self.fail_every and self.requests % self.fail_every == 0:
                kind = "slowdown" if (self.requests // self.fail_every) % 2 else "reset"
            else:
                return None
            self.faults[kind] += 1
            return kind


def _handler(proxy: FaultyS3Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the S3 clients use it

        def log_message(self, *args) -> None:  # quiet: pytest shows what a failing test printed
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_raw()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _chunked_raw(self) -> bytes:
            """The chunked body as sent (forwarded with its Transfer-Encoding header, so it stays chunked)."""
            out = bytearray()
            while True:
                line = self.rfile.readline()
                out += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = self.rfile.readline()
                        out += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(out)
                out += self.rfile.read(size + 2)

        def _handle(self) -> None:
            body = self._body()
            fault = proxy.decide(self.path)
            if fault == "reset":
                # SO_LINGER 0: close() sends RST, the client sees "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault is not None:
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOW_DOWN)
                return
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
