"""A small serverless-style HTTP function for sprout's snapshot tests.

Start-up does the work a snapshot saves: imports (json, asyncio, decimal,
email, http, urllib) and an initializer that builds state. Then it serves
HTTP/1.1 on a listening socket (asyncio: epoll plus its self-pipe
socketpair) and answers each request with the initializer's digest and a
per-process request counter, so restored instances can be told apart:
every instance starts from the dumped counter and diverges from there.

Each answer also carries a number from the `random` module and how many
times SIGUSR2 re-seeded it ("reseeds"): instances forked from one
template share the template's PRNG state until an after-fork signal
makes each re-seed from the kernel.

A request for /say/TEXT also prints TEXT on stdout.

Usage: python3 function.py [PORT]   (prints "ready" once listening)
"""

import asyncio
import decimal
import email.message
import email.utils
import hashlib
import http
import http.client
import json
import os
import random
import signal
import sys
import urllib.parse

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8080


def initialize():
    """Builds the state a request needs; the expensive part of a cold start."""
    decimal.getcontext().prec = 60
    # A few thousand decimals and parsed URLs: real allocations on the heap.
    table = [decimal.Decimal(i) / decimal.Decimal(7) for i in range(1, 20000)]
    urls = [urllib.parse.urlparse(f"https://example.invalid/fn/{i}?q={i * i}") for i in range(5000)]
    msg = email.message.EmailMessage()
    msg["Subject"] = "init"
    msg["Date"] = email.utils.formatdate(0)
    msg.set_content(json.dumps({"rows": len(table)}))
    blob = [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)]} for i in range(50000)]
    digest = hashlib.sha256()
    digest.update(str(sum(table)).encode())
    digest.update("".join(u.query for u in urls[:100]).encode())
    digest.update(msg.as_bytes())
    digest.update(json.dumps(blob[:100]).encode())
    return {"digest": digest.hexdigest(), "rows": len(blob), "status": http.HTTPStatus.OK.phrase}


STATE = initialize()
REQUESTS = 0
RESEEDS = 0


def reseed(_signum, _frame):
    """The after-fork hook: fresh entropy for this instance's PRNG."""
    global RESEEDS
    random.seed()
    RESEEDS += 1


signal.signal(signal.SIGUSR2, reseed)


async def handle(reader, writer):
    global REQUESTS
    try:
        request_line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        path = request_line.split()[1].decode() if request_line.count(b" ") >= 2 else "/"
        REQUESTS += 1
        if path.startswith("/say/"):
            # The instance's own output, for tests of where stdout goes.
            print(urllib.parse.unquote(path[5:]), flush=True)
        body = json.dumps(
            {
                "digest": STATE["digest"],
                "rows": STATE["rows"],
                "requests": REQUESTS,
                "path": urllib.parse.unquote(path),
                "pid": os.getpid(),
                "random": random.getrandbits(62),
                "reseeds": RESEEDS,
            }
        ).encode()
        head = (
            f"HTTP/1.1 200 {STATE['status']}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
    finally:
        writer.close()


async def main():
    # 0.0.0.0: binding works whether or not `lo` is up yet (a restored
    # instance lands in a fresh network namespace).
    server = await asyncio.start_server(handle, "0.0.0.0", PORT, backlog=128)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
