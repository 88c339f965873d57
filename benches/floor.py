#!/usr/bin/env python3
"""floor.py — how close a proxy can get to going direct on this machine.

Usage: benches/floor.py [PATH-TO-switchyard]      (default target/dist/switchyard)

HTTP/1.1 keep-alive (wrk -t2 -c64, 1 KiB answers from one nginx worker, as in
../shared/bench/proxy-compare.sh) through four routes, in an order that rotates every round:
  direct      wrk straight to the backend
  haproxy     haproxy, 2 threads, HTTP mode (proxy-compare's configuration)
  relay       benches/relay.c: a zero-work TCP relay, one backend connection per client
              connection, one recv and one send per message, nothing else. No HTTP proxy can do
              less socket work per request, so this is the floor of any proxy's cost here.
  switchyard  the binary under test (access log on, to a file)
For each run: requests/s, p99, and CPU time per request of the proxy (user and system), of the
backend and of wrk, from /proc. At the end, the medians and the per-round ratios that the issue's
targets are stated in (against haproxy, against direct), with the relay's beside switchyard's.

Knobs: ROUNDS=8, DURATION=5 (seconds per run), CONNS=64, THREADS=2, ROUTES="direct haproxy relay
switchyard" (a subset). All traffic is on 127.0.0.1; every process started is stopped on exit.
"""
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else 'target/dist/switchyard')
ROUNDS = int(os.environ.get('ROUNDS', '8'))
DURATION = int(os.environ.get('DURATION', '5'))
CONNS = int(os.environ.get('CONNS', '64'))
THREADS = int(os.environ.get('THREADS', '2'))
ROUTES = os.environ.get('ROUTES', 'direct haproxy relay switchyard').split()
UP, FRONT = 18380, 18381
HZ = os.sysconf('SC_CLK_TCK')
started = []


def log(msg):
    print(time.strftime('[%H:%M:%S] ') + msg, file=sys.stderr, flush=True)


def die(msg):
    log('FATAL: ' + msg)
    sys.exit(1)


def start(cmd, out=subprocess.DEVNULL):
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    started.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    started.remove(p)


def wait_port(port, p, what):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p is not None and p.poll() is not None:
            die(f'{what} exited before listening on :{port}')
        try:
            socket.create_connection(('127.0.0.1', port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f'{what} did not listen on :{port} within 15 s')


def wait_free(port):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), 0.2).close()
            time.sleep(0.05)
        except OSError:
            return
    die(f'port {port} still in use')


def cpu(pids):
    """User and system seconds of these processes (all threads)."""
    u = s = 0
    for pid in pids:
        try:
            f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        u += int(f[11])
        s += int(f[12])
    return u / HZ, s / HZ


def switches(pids):
    """Context switches (voluntary and not) of these processes, all threads."""
    n = 0
    for pid in pids:
        try:
            tasks = os.listdir(f'/proc/{pid}/task')
        except OSError:
            continue
        for t in tasks:
            try:
                for line in open(f'/proc/{pid}/task/{t}/status'):
                    if line.endswith('ctxt_switches:\t' + line.split('\t')[-1]):
                        n += int(line.split()[-1])
            except OSError:
                pass
    return n


def child_switches():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_nvcsw + r.ru_nivcsw


def wrk(port, seconds, latency=False):
    cmd = ['timeout', str(seconds + 10), 'wrk', f'-t{THREADS}', f'-c{CONNS}', f'-d{seconds}',
           f'http://127.0.0.1:{port}/']
    if latency:
        cmd.insert(-1, '--latency')
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def main():
    for b in ('nginx', 'wrk', 'cc', 'timeout') + (('haproxy',) if 'haproxy' in ROUTES else ()):
        if not shutil.which(b):
            die(f'missing {b} (apt-get install -y nginx wrk haproxy gcc)')
    if 'switchyard' in ROUTES and not os.access(BIN, os.X_OK):
        die(f'no binary at {BIN} (cargo build --profile dist)')
    tmp = tempfile.mkdtemp(prefix='floor.')
    relay = f'{tmp}/relay'
    r = subprocess.run(['cc', '-O2', '-pthread', '-o', relay, f'{HERE}/relay.c'],
                       capture_output=True, text=True)
    if r.returncode:
        die('cannot build relay.c: ' + r.stderr)
    body = 'o' * 1023 + 'k'
    os.makedirs(f'{tmp}/up')
    with open(f'{tmp}/up/nginx.conf', 'w') as f:
        f.write(f"""worker_processes 1; daemon off; master_process on; pid {tmp}/up/nginx.pid;
error_log {tmp}/up/error.log warn; events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path {tmp}/up/cbt; proxy_temp_path {tmp}/up/pt; fastcgi_temp_path {tmp}/up/ft;
  uwsgi_temp_path {tmp}/up/ut; scgi_temp_path {tmp}/up/st;
  server {{ listen 127.0.0.1:{UP} backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }} }} }}
""")
    with open(f'{tmp}/haproxy.cfg', 'w') as f:
        f.write(f"""global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{FRONT}
  default_backend be
backend be
  server up 127.0.0.1:{UP}
""")
    with open(f'{tmp}/switchyard.toml', 'w') as f:
        f.write(f"""[proxy]
http = "127.0.0.1:{FRONT}"
control = "{tmp}/control.sock"
state = "{tmp}/state.json"
access_log = "{tmp}/access.log"

[[site]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
active = "blue"
redirect_http = false
[site.pools]
blue = ["127.0.0.1:{UP}"]
green = ["127.0.0.1:{UP}"]
""")
    commands = {
        'direct': None,
        'haproxy': ['haproxy', '-db', '-f', f'{tmp}/haproxy.cfg'],
        'relay': [relay, str(FRONT), str(UP), '2'],
        'switchyard': [BIN, 'serve', '--config', f'{tmp}/switchyard.toml'],
    }
    up = start(['nginx', '-p', f'{tmp}/up', '-c', f'{tmp}/up/nginx.conf'])
    wait_port(UP, up, 'the backend nginx')
    worker = None
    deadline = time.monotonic() + 5
    while worker is None and time.monotonic() < deadline:
        kids = open(f'/proc/{up.pid}/task/{up.pid}/children').read().split()
        if kids:
            worker = int(kids[0])
        else:
            time.sleep(0.05)
    if worker is None:
        die('the backend nginx started no worker')
    log(f'backend nginx (1 worker) on :{UP}; {ROUNDS} rounds of {DURATION} s; routes {ROUTES}')
    runs = {name: [] for name in ROUTES}
    for rnd in range(ROUNDS):
        order = ROUTES[rnd % len(ROUTES):] + ROUTES[:rnd % len(ROUTES)]
        for name in order:
            p = None
            port = UP
            if commands[name] is not None:
                wait_free(FRONT)
                out = open(f'{tmp}/{name}.log', 'w')
                p = start(commands[name], out)
                port = FRONT
                wait_port(port, p, name)
            wrk(port, 2)  # warm-up: connections open, pools filled
            pids = [p.pid] if p else []
            b_proxy, b_up, t0 = cpu(pids), cpu([worker]), os.times()
            b_cs = (switches(pids), switches([worker]), child_switches())
            text = wrk(port, DURATION, latency=True)
            a_proxy, a_up, t1 = cpu(pids), cpu([worker]), os.times()
            a_cs = (switches(pids), switches([worker]), child_switches())
            if p:
                stop(p)
            m = re.search(r'(\d+) requests in', text)
            if not m or 'Non-2xx' in text or 'Socket errors' in text:
                log(f'{name} round {rnd + 1}: failed or errors:\n{text}')
                continue
            n = int(m.group(1))
            p99 = re.search(r'99%\s+(\S+)', text).group(1)
            per_req = 1e6 / n  # seconds of CPU in total -> µs per request
            row = {
                'rps': n / DURATION,
                'p99': p99,
                'usr': (a_proxy[0] - b_proxy[0]) * per_req,
                'sys': (a_proxy[1] - b_proxy[1]) * per_req,
                'up': (sum(a_up) - sum(b_up)) * per_req,
                'wrk': (t1.children_user + t1.children_system - t0.children_user
                        - t0.children_system) * per_req,
                'cs': [(a - b) / n for a, b in zip(a_cs, b_cs)],
            }
            runs[name].append((rnd, row))
            log(f'{name} round {rnd + 1}: {row["rps"]:.0f} rps, p99 {p99}, CPU per request: '
                f'proxy {row["usr"]:.1f} user + {row["sys"]:.1f} system µs, backend '
                f'{row["up"]:.1f}, wrk {row["wrk"]:.1f}; context switches per request: proxy '
                f'{row["cs"][0]:.2f}, backend {row["cs"][1]:.2f}, wrk {row["cs"][2]:.2f}')
    stop(up)
    shutil.rmtree(tmp, ignore_errors=True)
    report(runs)


def med(xs):
    return statistics.median(xs) if xs else float('nan')


def report(runs):
    print(f'h1 keep-alive, wrk -t{THREADS} -c{CONNS}, {ROUNDS} rounds of {DURATION} s, medians; '
          'CPU per request from /proc\n')
    print('| route | requests/s | p99 | proxy CPU per request (user + system) | backend | wrk | '
          'context switches per request: proxy / backend / wrk |')
    print('|---|---|---|---|---|---|---|')
    for name, rs in runs.items():
        if not rs:
            print(f'| {name} | failed | | | | | |')
            continue
        rows = [r for _, r in rs]
        proxy = (f'{med([r["usr"] for r in rows]):.1f} + {med([r["sys"] for r in rows]):.1f} µs'
                 if name != 'direct' else '—')
        p99s = sorted(rows, key=lambda r: r['rps'])[len(rows) // 2]['p99']
        print(f'| {name} | {med([r["rps"] for r in rows]):.0f} | {p99s} | {proxy} | '
              f'{med([r["up"] for r in rows]):.1f} µs | {med([r["wrk"] for r in rows]):.1f} µs | '
              + ' / '.join(f'{med([r["cs"][i] for r in rows]):.2f}' for i in range(3)) + ' |')
    by_round = {name: dict(rs) for name, rs in runs.items()}
    print('\nPer-round ratios (requests/s of the same round), median and range:\n')
    for a, b in [('switchyard', 'haproxy'), ('relay', 'haproxy'), ('switchyard', 'relay'),
                 ('haproxy', 'direct'), ('relay', 'direct'), ('switchyard', 'direct')]:
        if a not in by_round or b not in by_round:
            continue
        rs = [by_round[a][r]['rps'] / by_round[b][r]['rps']
              for r in by_round[a] if r in by_round[b]]
        if rs:
            print(f'- {a} / {b}: **{med(rs):.2f}** ({min(rs):.2f}–{max(rs):.2f}, {len(rs)} rounds)')


if __name__ == '__main__':
    try:
        main()
    finally:
        for p in list(started):
            stop(p)
