#!/usr/bin/env python3
"""Switch latency: time from sending `POST /v1/sites/SITE/switch` to the first proxied request that
is answered by the new color, measured N times against a running switchyard (e.g. `switchyard demo`).

Usage: benches/switch-latency.py CONTROL_SOCKET HTTP_ADDR SITE [N]
Example: benches/switch-latency.py .switchyard-demo/control.sock 127.0.0.1:8080 demo 200
The demo backends answer with an `x-demo-color` header; other backends need one too.
"""
import http.client, json, socket, statistics, sys, time


class UnixConn(http.client.HTTPConnection):
    """http.client over the control socket."""

    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def main():
    ctl, addr, site = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    host, port = addr.rsplit(":", 1)
    web = http.client.HTTPConnection(host, int(port))
    api_ms, first_ms = [], []
    color = None
    for i in range(n):
        web.request("GET", "/")
        r = web.getresponse(); r.read()
        color = r.getheader("x-demo-color")
        to = "green" if color == "blue" else "blue"
        c = UnixConn(ctl)
        t0 = time.perf_counter()
        c.request("POST", f"/v1/sites/{site}/switch", body=json.dumps({"to": to}), headers={"content-type": "application/json"})
        resp = c.getresponse(); resp.read()
        t1 = time.perf_counter()
        assert resp.status == 200, resp.status
        while True:
            web.request("GET", "/")
            r = web.getresponse(); r.read()
            if r.getheader("x-demo-color") == to:
                break
        t2 = time.perf_counter()
        api_ms.append((t1 - t0) * 1000)
        first_ms.append((t2 - t0) * 1000)
    q = lambda v, p: sorted(v)[min(len(v) - 1, int(len(v) * p))]
    print(f"{n} switches: API answer p50 {q(api_ms,.5):.2f} ms p99 {q(api_ms,.99):.2f} ms; "
          f"first request on the new color p50 {q(first_ms,.5):.2f} ms p99 {q(first_ms,.99):.2f} ms "
          f"(the switch is stored before the API answers, so no request after the answer sees the old color)")

if __name__ == "__main__":
    main()
