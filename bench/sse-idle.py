#!/usr/bin/env python3
"""Opens N idle SSE streams to a gateway and holds them: the SSE half of
bench/idle-memory.sh. Each stream is its own user (a JWT signed here with the
HMAC secret in GATEWAY_SECRET) in 1 of ROOMS rooms plus its user channel, as
the WebSocket run's sockets are. Reads nothing after the response head: an
idle stream's few frames (welcome, ok, pings) sit in socket buffers.

    sse-idle.py PORT STREAMS ROOMS SECONDS
"""
import base64, hashlib, hmac, json, os, selectors, socket, sys, time

port, streams, rooms, seconds = (int(a) for a in sys.argv[1:5])
secret = os.environ["GATEWAY_SECRET"].encode()

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")

def token(sub, room):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600, "rooms": [room]}).encode())
    sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()

sel = selectors.DefaultSelector()
open_streams, refused, start = [], 0, time.time()
pending = {}
for i in range(streams):
    room = f"r{i % rooms}"
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /sse?token={token(f'u{i}', room)}&rooms={room} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n".encode())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    pending[s] = b""
    # Keep at most 200 handshakes in flight, like the WebSocket run.
    while len(pending) >= 200 or (i == streams - 1 and pending):
        for key, _ in sel.select(timeout=10):
            sock = key.fileobj
            data = sock.recv(4096)
            pending[sock] += data
            if b"\r\n\r\n" in pending[sock] or not data:
                ok = pending.pop(sock).startswith(b"HTTP/1.1 200")
                sel.unregister(sock)
                if ok:
                    open_streams.append(sock)
                else:
                    refused += 1
                    sock.close()
print(f"open={len(open_streams)} refused={refused} in {time.time() - start:.1f}s", flush=True)
time.sleep(seconds)
