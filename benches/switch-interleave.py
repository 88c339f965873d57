#!/usr/bin/env python3
"""Measures what switching costs the traffic, in one continuous load run.

While a load generator keeps the proxy busy, this alternates windows of WINDOW seconds: quiet,
switching at RATE per second, quiet, switching, ... (PAIRS switching windows, PAIRS + 1 quiet).
It reads switchyard_requests_total from the metrics listener at every window boundary, so each
window's request rate is the proxy's own count, not the load generator's.

Each switching window is compared with the mean of the two quiet windows around it. Adjacent
windows are seconds apart, so the machine's slow drift (this shared VM moves by +-15 % from one
5-second window to the next) cancels out of the ratio, and the mean of many ratios narrows the
rest. Prints every window on stderr and, on stdout, one line:
  "ratio MEAN ci95 HALF median MED pairs N switches S errors E"
where MEAN is the mean of (switching rate / quiet rate), HALF the half-width of its 95 %
confidence interval (normal approximation).

RATE 0 measures the instrument itself: the same windows with no switch in any of them.

Usage: switch-interleave.py METRICS_ADDR CONTROL_SOCKET SITE RATE WINDOW PAIRS
"""
import http.client
import json
import socket
import statistics
import sys
import time


def control_request(sock, raw):
    """Sends one pre-built request over the kept-alive control connection and returns the status.
    Raw bytes and a minimal reader keep the switcher's own CPU (which competes with the proxy on
    this machine) to a few tens of microseconds per switch."""
    sock.sendall(raw)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("the control socket closed")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("the control socket closed")
        body += chunk
    return int(head.split(b" ", 2)[1])


def switch_request(site, color):
    body = json.dumps({"to": color, "force": True}).encode()
    return (f"POST /v1/sites/{site}/switch HTTP/1.1\r\nhost: localhost\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def requests_total(conn):
    """Sum of switchyard_requests_total over all its label sets."""
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    body = r.read().decode()
    if r.status != 200:
        raise SystemExit(f"metrics answered {r.status}: {body[:200]}")
    total = 0.0
    for line in body.splitlines():
        if line.startswith("switchyard_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    if len(sys.argv) != 7:
        raise SystemExit(__doc__)
    metrics, sock, site = sys.argv[1], sys.argv[2], sys.argv[3]
    rate, window, pairs = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    host, port = metrics.rsplit(":", 1)
    m = http.client.HTTPConnection(host, int(port))
    def connect():
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(sock)
        return c

    c = connect()
    raw = {color: switch_request(site, color) for color in ("blue", "green")}
    color, switches, errors = "green", 0, 0

    def switch():
        nonlocal color, switches, errors, c
        try:
            if control_request(c, raw[color]) != 200:
                errors += 1
        except OSError:
            errors += 1
            c.close()
            c = connect()
        switches += 1
        color = "blue" if color == "green" else "green"

    rates = []  # (switching?, requests per second)
    start = time.monotonic()
    last_t, last_n = start, requests_total(m)
    for w in range(2 * pairs + 1):
        switching = w % 2 == 1
        end = start + (w + 1) * window
        k = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if switching and rate > 0:
                due = end - window + k / rate
                if due <= now:
                    switch()
                    k += 1
                    continue
                time.sleep(min(due, end) - now)
            else:
                time.sleep(end - now)
        t, n = time.monotonic(), requests_total(m)
        rates.append((switching, (n - last_n) / (t - last_t)))
        print(f"window {w:3d} {'switching' if switching else 'quiet    '} {rates[-1][1]:10.0f} rps",
              file=sys.stderr)
        last_t, last_n = t, n
    ratios = []
    for i in range(1, len(rates), 2):
        quiet = (rates[i - 1][1] + rates[i + 1][1]) / 2
        if quiet <= 0:
            raise SystemExit("no requests in a quiet window: is the load generator running?")
        ratios.append(rates[i][1] / quiet)
    mean = statistics.fmean(ratios)
    half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
    print(f"ratio {mean:.4f} ci95 {half:.4f} median {statistics.median(ratios):.4f} "
          f"pairs {len(ratios)} switches {switches} errors {errors}")


if __name__ == "__main__":
    main()
