"""A minimal WebSocket client and HS256 JWT minting for bench/run's API
scenarios (control, presence, continuity): Python standard library only, text
frames only, client-side masking, blocking sockets with timeouts. Not a
general client: just enough to open authenticated sockets, send frames, and
see events and close frames with their arrival time."""

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_hs256(secret, claims):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def token(secret, sub, rooms=("*",), jti=None, iat=None, ttl=3600):
    now = int(time.time())
    claims = {"sub": sub, "exp": now + ttl, "iat": now if iat is None else iat, "rooms": list(rooms)}
    if jti is not None:
        claims["jti"] = jti
    return jwt_hs256(secret, claims)


def hs_secret(root):
    """auth.hs_secret of the repository's gateway.toml (the nodes read it)."""
    section = None
    with open(os.path.join(root, "gateway.toml")) as f:
        for line in f:
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]")
            elif section == "auth" and s.startswith("hs_secret") and "=" in s and not s.startswith("hs_secret_"):
                return s.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no auth.hs_secret in gateway.toml")


class Closed(Exception):
    pass


class WS:
    """One client socket. `frames()` yields (opcode, payload, arrival monotonic s)."""

    def __init__(self, port, tok, host="127.0.0.1", path="/ws", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {tok}\r\n\r\n")
        self.sock.sendall(req.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed("closed during handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        self.status = int(self.status_line.split()[1])
        self.head = head.decode("utf-8", "replace")
        if self.status != 101:
            # The refusal's JSON body (if any) follows the head.
            self.body = self.buf
            self.sock.close()
            self.sock = None
            return
        self.close_code = None
        self.closed_at = None

    def send_text(self, text):
        data = text.encode()
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + masked)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise Closed("eof")
            self.buf += chunk

    def frame(self):
        """The next frame: (opcode, payload bytes, arrival time). Pongs
        pings; raises Closed on EOF."""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                self._need(4)
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._need(off + n)
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            at = time.monotonic()
            op = b0 & 0x0F
            if op == 0x9:  # ping -> pong
                mask = os.urandom(4)
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask +
                                  bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                continue
            if op == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed_at = at
            return op, payload, at

    def json(self):
        """The next text frame as JSON, with its arrival time; (None, t) on close."""
        while True:
            op, payload, at = self.frame()
            if op == 0x1:
                return json.loads(payload), at
            if op == 0x8:
                return None, at

    def wait_for(self, pred, timeout=10.0):
        self.sock.settimeout(timeout)
        while True:
            msg, at = self.json()
            if msg is None:
                raise Closed(f"closed {self.close_code} while waiting")
            if pred(msg):
                return msg, at

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
