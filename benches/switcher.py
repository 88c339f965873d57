#!/usr/bin/env python3
"""Switches SITE between blue and green RATE times per second for SECONDS, over one keep-alive
connection to the control socket (so the switcher itself costs almost no CPU).
Usage: switcher.py CONTROL_SOCKET SITE RATE SECONDS. Prints "N switches, E errors"."""
import http.client
import json
import socket
import sys
import time


class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def main():
    path, site, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    c = UnixConn(path)
    n = errors = 0
    color = "green"
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            body = json.dumps({"to": color, "force": True})
            c.request("POST", f"/v1/sites/{site}/switch", body, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors += 1
        except OSError:
            errors += 1
            c.close()
            c = UnixConn(path)
        n += 1
        color = "blue" if color == "green" else "green"
    print(f"{n} switches, {errors} errors")


if __name__ == "__main__":
    main()
