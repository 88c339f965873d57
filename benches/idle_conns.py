#!/usr/bin/env python3
"""Memory of idle keep-alive connections: opens N connections to HOST:PORT (TLS with --tls), sends
one GET on each and reads the answer, keeps them all open and idle, and reports the RSS of PID
before and after. Usage: idle_conns.py PID HOST PORT N [--tls]"""
import asyncio
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one(host, port, ctx, conns, sem):
    async with sem:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost" if ctx else None)
        w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        await r.readexactly(n)
        conns.append((r, w))


async def main():
    pid, host, port, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tls = "--tls" in sys.argv
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    time.sleep(1)
    before = rss_kib(pid)
    conns = []
    sem = asyncio.Semaphore(200)
    t = time.monotonic()
    await asyncio.gather(*(one(host, port, ctx, conns, sem) for _ in range(n)))
    took = time.monotonic() - t
    await asyncio.sleep(2)
    after = rss_kib(pid)
    per = (after - before) * 1024 / n
    kind = "TLS" if tls else "plain"
    print(f"{kind}: RSS {before} KiB idle, {after} KiB with {len(conns)} idle keep-alive connections "
          f"(opened in {took:.1f} s): {per / 1024:.1f} KiB per connection")
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
