#!/usr/bin/env python3
"""compare.py — switchyard against haproxy and nginx (and one build against another), with
per-round paired ratios and 95 % intervals, so that "5 % faster" can be checked on a noisy box.

Usage (from the project root):
  benches/compare.py --sy a=/tmp/sy-A --sy b=target/dist/switchyard
  ROUNDS=3 DURATION=3 benches/compare.py --sy a=/tmp/sy-A --sy b=/tmp/sy-A    # A/A check
  benches/compare.py --sy log=/tmp/sy-A --sy nolog=/tmp/sy-A --log-off nolog  # the log's cost
  benches/compare.py --selftest              # the statistics on synthetic data, no load
  benches/compare.py --report DIR/compare.json   # re-print the tables of a finished run
  benches/compare.py --report A/compare.json B/compare.json   # several runs pooled as one

Setup (as ../shared/bench/proxy-compare.sh): one upstream, nginx with 1 worker answering 1 KiB
at /, and in front of it, each on its own ports and started ONCE for the whole run (each in its
own process group): haproxy (1 process, 2 threads), nginx (2 workers), every `--sy NAME=PATH`
binary (config as ../shared/bench/switchyard-candidate.sh: access log to stdout, which goes to a
file that is emptied after each load) and, with --relay, benches/relay.c (a zero-work TCP relay,
h1 only: the floor of floor.py), with --floor PATH, examples/h2_floor.rs (the least an HTTP/2
proxy on switchyard's crates does; h2 only). A round runs every (test, candidate) pair once:
  h1        wrk -t2 -c64 keep-alive, http://           (plus "direct": wrk straight to the upstream)
  https     wrk -t2 -c64 keep-alive, https://          (ALPN http/1.1)
  h2        h2load -t2 -c32 -m10, https://             (ALPN h2)
  handshake wrk -t2 -c64 -H 'Connection: close', https:// (a TLS handshake per request)
The candidates of a test run back to back, in an order taken from a Williams design (every
candidate equally often in every position and after every other candidate), shuffled with SEED;
the order of the tests rotates per round. For each load: requests/s, p50/p99 latency (wrk
--latency; h2load's per-request log), errors, and CPU time per request from /proc (utime+stime
of all processes of the candidate's process group, of the upstream, of the load generator, and
what else the machine ran meanwhile, "foreign", from /proc/stat). "CPU-bound req/s" = CPUs /
(proxy + upstream + load generator CPU per request): the rate if those three had the machine to
themselves (they saturate it in every load, so req/s = (CPUs - foreign) / CPU per request).

Ratios are taken per round (candidate / reference in the same round, measured seconds apart) and
summarised by their median and a 95 % interval: the distribution-free interval on the median
from order statistics (binomial ranks, >= 6 rounds); with fewer rounds the bootstrap percentile
interval (10 000 resamples) instead, marked "b". Both are in the JSON. See benches/README.md.

Knobs (environment): ROUNDS=20 DURATION=5 (s per load) WARMUP=1 (s of the same load before each
measured one, not counted) COOLDOWN=1 (s after each load) TESTS="h1 https h2 handshake" SEED=1
RESULTS_DIR (default target/bench-results/compare-<UTC time>) KEY_TYPE=ec|rsa CONNS=64 H2_CONNS=32
H2_STREAMS=10 THREADS=2 ACCESS_LOG=stdout|off (switchyard) BASE_PORT=18600 BOOT=10000
MAX_FOREIGN=0.3 RETRIES=2 (a load during which other processes took more than 0.3 cores is
run again, up to twice, for at most a quarter of the loads; the number is in the report).
Output: Markdown on stdout, progress on stderr, compare.json + compare.md + raw/ in RESULTS_DIR.
All traffic on 127.0.0.1; every subprocess has a timeout; everything started is stopped on exit.
"""
import argparse
import functools
import json
import math
import os
import random
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
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HZ = os.sysconf('SC_CLK_TCK')
LOOP = '127.0.0.1'
BODY_BYTES = 1024
ALL_TESTS = ('h1', 'https', 'h2', 'handshake')
TLS_TESTS = ('https', 'h2', 'handshake')
TEST_TITLE = {
    'h1': 'h1 keep-alive',
    'https': 'https h1 keep-alive',
    'h2': 'h2 over TLS',
    'handshake': 'TLS handshakes',
}
LEVEL = 0.95
TOL = 0.05          # "narrower than ±5 %"
Z = 1.959964        # normal 97.5 % quantile
MEDIAN_EFF = math.sqrt(math.pi / 2)   # SE(median) / SE(mean) for normal data

started = []        # Popen objects still to stop


def log(msg):
    print(time.strftime('[%H:%M:%S] ') + msg, file=sys.stderr, flush=True)


def die(msg):
    log('FATAL: ' + msg)
    sys.exit(1)


# ============================================================== statistics ==

def median(xs):
    return statistics.median(xs) if xs else float('nan')


def _quantile_sorted(s, q):
    """Linear interpolation between order statistics (numpy's default)."""
    if not s:
        return float('nan')
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (h - lo)


def bootstrap_median_ci(xs, rng, boot=10000, level=LEVEL):
    """Percentile bootstrap interval of the median: resample the values with replacement `boot`
    times, take each resample's median, return the (1-level)/2 and (1+level)/2 quantiles."""
    n = len(xs)
    if n == 0:
        return float('nan'), float('nan')
    if n == 1:
        return xs[0], xs[0]
    meds = []
    choices = rng.choices
    mid = n // 2
    odd = n % 2
    for _ in range(boot):
        s = sorted(choices(xs, k=n))
        meds.append(s[mid] if odd else (s[mid - 1] + s[mid]) / 2)
    meds.sort()
    a = (1 - level) / 2
    return _quantile_sorted(meds, a), _quantile_sorted(meds, 1 - a)


@functools.lru_cache(maxsize=None)
def os_median_ranks(n, level=LEVEL):
    """Ranks (1-based) (k, n+1-k) of the order statistics that bracket the median with coverage
    >= level whatever the distribution (the sign-test interval), and that coverage; None when n is
    too small for any such pair (n < 6 at 95 %)."""
    a = (1 - level) / 2
    total = 2 ** n
    term, cdf, k = 1, 1, 0          # term = C(n, k); cdf = sum of C(n, i) for i <= k
    while cdf * 1.0 / total <= a:   # P(X <= k) <= a  ->  rank k+1 is a valid lower bound
        k += 1
        term = term * (n - k + 1) // k
        cdf += term
    if k == 0:
        return None
    return k, n + 1 - k, 1 - 2 * (cdf - term) / total


def os_median_ci(xs, level=LEVEL):
    r = os_median_ranks(len(xs), level)
    if r is None:
        return None
    s = sorted(xs)
    return s[r[0] - 1], s[r[1] - 1], r[2]


def os_half_width(n, sigma):
    """Expected half-width, relative, of the order-statistics interval of the median of n
    log-normal ratios whose logs have SD sigma: its ranks' expected normal scores (Blom)."""
    r = os_median_ranks(n)
    if r is None:
        return float('inf')
    z = -statistics.NormalDist().inv_cdf((r[0] - 0.375) / (n + 0.25))
    return math.sinh(sigma * z)


def rounds_for(xs, tol=TOL):
    """Rounds needed for the 95 % interval of the median of these ratios to come out within
    ±tol, at their observed spread (the SD of the log ratios, taken as normal)."""
    if len(xs) < 2 or min(xs) <= 0:
        return None
    s = statistics.stdev([math.log(x) for x in xs])
    for n in range(6, 1001):   # the width jumps with n (ranks are whole): all of n..n+10 must do
        if all(os_half_width(m, s) < tol for m in range(n, n + 11)):
            return n
    return None                # more than 1000


def summarise(xs, seed_label, seed, boot):
    """Median and 95 % interval of per-round ratios (the table's interval: order statistics when
    there are >= 6 rounds, else the bootstrap), plus both intervals for the JSON."""
    xs = [x for x in xs if x is not None and math.isfinite(x) and x > 0]
    out = {'n': len(xs), 'values': xs}
    if not xs:
        return out
    rng = random.Random(seed * 1000003 + zlib.crc32(seed_label.encode()))
    m = median(xs)
    blo, bhi = bootstrap_median_ci(xs, rng, boot)
    osci = os_median_ci(xs)
    out.update(median=m, boot_lo=blo, boot_hi=bhi)
    if osci:
        out.update(os_lo=osci[0], os_hi=osci[1], os_coverage=osci[2], lo=osci[0], hi=osci[1],
                   method='order statistics')
    else:
        out.update(lo=blo, hi=bhi, method='bootstrap')
    half = (out['hi'] - out['lo']) / (2 * m)
    out['half_width'] = half
    out['narrow'] = half < TOL and 'os_lo' in out   # the bootstrap of < 6 rounds is too short
    out['rounds_needed'] = rounds_for(xs)
    return out


def williams(n):
    """Rows of a Williams design for n treatments: each row is an order of 0..n-1; over all rows
    every treatment is in every position equally often and directly follows every other
    treatment equally often (n rows for even n, 2n for odd n)."""
    if n == 1:
        return [[0]]
    first = [0]
    lo, hi = 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    if n % 2:
        rows += [list(reversed(r)) for r in rows]
    return rows


class Orders:
    """Candidate order per (test, round): a Williams design over the test's candidates, rows
    and labels shuffled with the seed; row r % len(rows) in round r."""

    def __init__(self, seed):
        self.seed = seed
        self.cache = {}

    def get(self, test, cands, rnd):
        key = (test, tuple(cands))
        if key not in self.cache:
            rng = random.Random(self.seed * 7919 + zlib.crc32(test.encode()))
            rows = williams(len(cands))
            rng.shuffle(rows)
            labels = list(cands)
            rng.shuffle(labels)
            self.cache[key] = [[labels[i] for i in row] for row in rows]
        rows = self.cache[key]
        return rows[rnd % len(rows)]


# ================================================================= parsing ==

def to_ms(v):
    m = re.fullmatch(r'([0-9.]+)(us|ms|s|m)', v.strip())
    if not m:
        return float('nan')
    x = float(m.group(1))
    return x * {'us': 1e-3, 'ms': 1.0, 's': 1e3, 'm': 6e4}[m.group(2)]


def parse_wrk(text):
    """-> dict(requests, rps, p50_ms, p99_ms, errors) or None."""
    m = re.search(r'^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m)', text, re.M)
    r = re.search(r'^Requests/sec:\s+([0-9.]+)', text, re.M)
    if not m or not r:
        return None
    err = 0
    se = re.search(r'Socket errors:(.*)', text)
    if se:
        err += sum(int(x) for x in re.findall(r'\d+', se.group(1)))
    nx = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', text)
    if nx:
        err += int(nx.group(1))
    p = {q: re.search(rf'^\s+{q}%\s+(\S+)', text, re.M) for q in ('50', '99')}
    return {
        'requests': int(m.group(1)),
        'rps': float(r.group(1)),
        'p50_ms': to_ms(p['50'].group(1)) if p['50'] else float('nan'),
        'p99_ms': to_ms(p['99'].group(1)) if p['99'] else float('nan'),
        'errors': err,
    }


def parse_h2load(text, latencies_us=None):
    """-> dict(requests, rps, p50_ms, p99_ms, errors, proto) or None."""
    f = re.search(r'^finished in [0-9.]+\w*, ([0-9.]+) req/s', text, re.M)
    q = re.search(r'^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, '
                  r'(\d+) failed, (\d+) errored, (\d+) timeout', text, re.M)
    if not f or not q:
        return None
    st = re.search(r'^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx', text, re.M)
    proto = re.search(r'^Application protocol: (\S+)', text, re.M)
    err = int(q.group(5)) + int(q.group(6)) + int(q.group(7))
    if st:
        err += int(st.group(3)) + int(st.group(4))
    p50 = p99 = float('nan')
    if latencies_us:
        s = sorted(latencies_us)
        p50, p99 = _quantile_sorted(s, 0.5) / 1e3, _quantile_sorted(s, 0.99) / 1e3
    return {
        'requests': int(q.group(3)),
        'rps': float(f.group(1)),
        'p50_ms': p50,
        'p99_ms': p99,
        'errors': err,
        'proto': proto.group(1) if proto else None,
    }


def read_h2log(path):
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split('\t')
                if len(parts) >= 3:
                    out.append(int(parts[2]))
    except (OSError, ValueError):
        pass
    return out


# ============================================================ /proc readers ==

def proc_stat_fields(pid):
    with open(f'/proc/{pid}/stat') as fh:
        return fh.read().rsplit(')', 1)[1].split()


def group_pids(pgid):
    pids = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            if int(proc_stat_fields(d)[2]) == pgid:
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def group_cpu(pgid):
    """(user, system) seconds of every live process in the process group (all threads)."""
    u = s = 0
    for pid in group_pids(pgid):
        try:
            f = proc_stat_fields(pid)
        except OSError:
            continue
        u += int(f[11])
        s += int(f[12])
    return u / HZ, s / HZ


def machine_cpu():
    """(busy, steal) seconds summed over all CPUs since boot."""
    with open('/proc/stat') as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / HZ, steal / HZ


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def idle_share(seconds=1.0):
    def snap():
        with open('/proc/stat') as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return f[3] + f[4], sum(f[:8])
    a = snap()
    time.sleep(seconds)
    b = snap()
    return (b[0] - a[0]) / max(1, b[1] - a[1])


# ====================================================== process management ==

def start(cmd, logpath, env=None):
    out = open(logpath, 'ab')   # O_APPEND, so that the file can be emptied under the writer
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    out.close()
    started.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    else:
        try:   # the leader is gone; stragglers of its group (nginx workers) are not
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in started:
        started.remove(p)


def run_bounded(cmd, timeout):
    """Run a load generator in its own process group; kill the group on timeout.
    -> (returncode or None on timeout, output text)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    started.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=10)
        rc = None
    finally:
        if p in started:
            started.remove(p)
    return rc, out.decode(errors='replace')


def port_open(port):
    try:
        socket.create_connection((LOOP, port), 0.2).close()
        return True
    except OSError:
        return False


def wait_port(port, p, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p is not None and p.poll() is not None:
            return False
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


def curl(url, http2=False):
    cmd = ['curl', '-sk', '-m', '5', '-o', '/dev/null', '-w',
           '%{http_code} %{size_download} %{http_version}']
    if http2:
        cmd.append('--http2')
    try:
        r = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=10)
        return r.stdout.strip()
    except subprocess.TimeoutExpired:
        return 'timeout'


# ================================================================== configs ==

def write_configs(tmp, up_port, key_type):
    os.makedirs(f'{tmp}/certs')
    cert, key = f'{tmp}/certs/localhost.crt', f'{tmp}/certs/localhost.key'
    keyopt = (['-newkey', 'rsa:2048'] if key_type == 'rsa' else
              ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'])
    r = subprocess.run(['openssl', 'req', '-x509', *keyopt, '-nodes', '-days', '2', '-subj',
                        '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
                        '-keyout', key, '-out', cert], capture_output=True, text=True, timeout=30)
    if r.returncode:
        die('openssl failed: ' + r.stderr)
    with open(f'{tmp}/combined.pem', 'w') as fh:
        fh.write(open(cert).read() + open(key).read())
    body = 'o' * (BODY_BYTES - 1) + 'k'
    temps = lambda d: (f'client_body_temp_path {d}/cbt; proxy_temp_path {d}/pt; '
                       f'fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;')
    os.makedirs(f'{tmp}/up')
    with open(f'{tmp}/up/nginx.conf', 'w') as fh:
        fh.write(f"""worker_processes 1;
daemon off;
master_process on;
pid {tmp}/up/nginx.pid;
error_log {tmp}/up/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  {temps(tmp + '/up')}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {{
    listen {LOOP}:{up_port} backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
""")
    return cert, key


def haproxy_cmd(tmp, name, http, https, up_port):
    d = f'{tmp}/{name}'
    os.makedirs(d, exist_ok=True)
    with open(f'{d}/haproxy.cfg', 'w') as fh:
        fh.write(f"""global
  nbthread 2
  maxconn 8000
  tune.ssl.default-dh-param 2048
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind {LOOP}:{http}
  bind {LOOP}:{https} ssl crt {tmp}/combined.pem alpn h2,http/1.1
  default_backend be
backend be
  server up {LOOP}:{up_port}
""")
    return ['haproxy', '-db', '-f', f'{d}/haproxy.cfg']


def nginx_cmd(tmp, name, http, https, up_port, cert, key):
    d = f'{tmp}/{name}'
    os.makedirs(d, exist_ok=True)
    with open(f'{d}/nginx.conf', 'w') as fh:
        fh.write(f"""worker_processes 2;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/cbt; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  upstream up {{
    server {LOOP}:{up_port};
    keepalive 1024;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }}
  server {{
    listen {LOOP}:{http} backlog=4096;
    listen {LOOP}:{https} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }}
  }}
}}
""")
    return ['nginx', '-p', d, '-c', f'{d}/nginx.conf']


def switchyard_cmd(tmp, name, binary, http, https, up_port, access_log):
    """The configuration of ../shared/bench/switchyard-candidate.sh, on this candidate's ports."""
    d = f'{tmp}/{name}'
    os.makedirs(f'{d}/certs', exist_ok=True)
    for ext in ('crt', 'key'):
        shutil.copy(f'{tmp}/certs/localhost.{ext}', f'{d}/certs/localhost.{ext}')
    alog = 'access_log = "off"\n' if access_log == 'off' else ''
    with open(f'{d}/switchyard.toml', 'w') as fh:
        fh.write(f"""[proxy]
http = "{LOOP}:{http}"
https = "{LOOP}:{https}"
certs = "{d}/certs"
control = "{d}/control.sock"
state = "{d}/state.json"
{alog}
[[site]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
active = "blue"
redirect_http = false
[site.pools]
blue = ["{LOOP}:{up_port}"]
green = ["{LOOP}:{up_port}"]
""")
    return [binary, 'serve', '--config', f'{d}/switchyard.toml']


# ================================================================ the run ==

class Cand:
    def __init__(self, name, kind, http, https=None, path=None):
        self.name, self.kind, self.http, self.https, self.path = name, kind, http, https, path
        self.proc = None
        self.log = None
        self.tls = https is not None
        self.startup = ''
        self.access_log = None   # switchyard only: stdout or off


def versions(cands):
    v = {}
    for what, cmd in (('haproxy', ['haproxy', '-v']), ('nginx', ['nginx', '-v']),
                      ('wrk', ['wrk', '-v']), ('h2load', ['h2load', '--version']),
                      ('openssl', ['openssl', 'version'])):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            line = (r.stdout + r.stderr).strip().splitlines()[0]
            m = re.search(r'(\d+\.\d+[\w.+~-]*)', line)
            v[what] = m.group(1) if m else line
        except (OSError, subprocess.TimeoutExpired, IndexError):
            v[what] = '?'
    for c in cands:
        if c.kind == 'switchyard':
            try:
                st = os.stat(c.path)
                v[c.name] = (f'{c.path} ({st.st_size} bytes, '
                             f'{time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))})')
            except OSError:
                v[c.name] = c.path
    return v


def env_int(name, default):
    v = os.environ.get(name, str(default))
    try:
        x = int(v)
    except ValueError:
        die(f'{name} must be an integer, got {v!r}')
    return x


def env_float(name, default):
    v = os.environ.get(name, str(default))
    try:
        return float(v)
    except ValueError:
        die(f'{name} must be a number, got {v!r}')


def run(args):
    rounds = env_int('ROUNDS', 20)
    duration = env_int('DURATION', 5)
    warmup = env_int('WARMUP', 1)
    cooldown = env_float('COOLDOWN', 1)
    max_foreign = env_float('MAX_FOREIGN', 0.3)
    retries = env_int('RETRIES', 2)
    seed = env_int('SEED', 1)
    boot = env_int('BOOT', 10000)
    threads = env_int('THREADS', 2)
    conns = env_int('CONNS', 64)
    h2_conns = env_int('H2_CONNS', 32)
    h2_streams = env_int('H2_STREAMS', 10)
    base = env_int('BASE_PORT', 18600)
    key_type = os.environ.get('KEY_TYPE', 'ec')
    access_log = os.environ.get('ACCESS_LOG', 'stdout')
    tests = os.environ.get('TESTS', ' '.join(ALL_TESTS)).split()
    for t in tests:
        if t not in ALL_TESTS:
            die(f'unknown test {t!r} (TESTS from {" ".join(ALL_TESTS)})')
    if rounds < 1 or duration < 1:
        die('ROUNDS and DURATION must be >= 1')
    if access_log not in ('stdout', 'off'):
        die('ACCESS_LOG is stdout or off')
    results_dir = os.environ.get('RESULTS_DIR') or os.path.join(
        os.environ.get('CARGO_TARGET_DIR', os.path.join(ROOT, 'target')), 'bench-results',
        'compare-' + time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()))
    os.makedirs(f'{results_dir}/raw', exist_ok=True)

    need = ['nginx', 'wrk', 'openssl', 'curl']
    if any(t in tests for t in ('h2',)):
        need.append('h2load')
    if not args.no_haproxy:
        need.append('haproxy')
    if args.relay:
        need.append('cc')
    for b in need:
        if not shutil.which(b):
            die(f'missing {b} (apt-get install -y haproxy nginx wrk nghttp2-client curl openssl)')

    # candidates and ports: upstream BASE, candidate i on BASE+10+2i (http) and +1 (https)
    up_port = base
    cands = []
    names = []
    if not args.no_haproxy:
        names.append(('haproxy', 'haproxy', None))
    if not args.no_nginx:
        names.append(('nginx', 'nginx', None))
    for spec in args.sy:
        if '=' not in spec:
            die(f'--sy wants NAME=PATH, got {spec!r}')
        n, p = spec.split('=', 1)
        p = os.path.abspath(p)
        if not os.access(p, os.X_OK):
            die(f'--sy {n}: no executable at {p}')
        names.append((n, 'switchyard', p))
    for n in args.log_off:
        if n not in [x[0] for x in names if x[1] == 'switchyard']:
            die(f'--log-off {n}: no --sy candidate of that name')
    if args.relay:
        names.append(('relay', 'relay', None))
    if args.floor:
        p = os.path.abspath(args.floor)
        if not os.access(p, os.X_OK):
            die(f'--floor: no executable at {p} (cargo build --profile dist --example h2_floor)')
        names.append(('floor', 'floor', p))
    seen = set()
    for i, (n, kind, p) in enumerate(names):
        if n in seen or n == 'direct' or not re.fullmatch(r'[A-Za-z0-9_.-]+', n):
            die(f'bad or duplicate candidate name {n!r}')
        seen.add(n)
        http = base + 10 + 2 * i
        cands.append(Cand(n, kind, http, None if kind == 'relay' else http + 1, p))
        if kind == 'switchyard':
            cands[-1].access_log = 'off' if n in args.log_off else access_log
    if not cands:
        die('no candidates')
    for port in [up_port] + [c.http for c in cands] + [c.https for c in cands if c.https]:
        if port_open(port):
            die(f'port {port} is in use (BASE_PORT to move)')

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ValueError, OSError):
        pass

    tmp = tempfile.mkdtemp(prefix='compare.')
    shm = tempfile.mkdtemp(prefix='compare.', dir='/dev/shm') if os.access('/dev/shm', os.W_OK) \
        else tmp
    try:
        return measure(locals())
    finally:
        for p in list(reversed(started)):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
        if shm != tmp:
            shutil.rmtree(shm, ignore_errors=True)


def measure(cfg):
    g = cfg.get
    tmp, shm, cands, tests = g('tmp'), g('shm'), g('cands'), g('tests')
    up_port, results_dir = g('up_port'), g('results_dir')
    rounds, duration, warmup, cooldown = g('rounds'), g('duration'), g('warmup'), g('cooldown')
    max_foreign, retries = g('max_foreign'), g('retries')
    threads, conns, h2_conns, h2_streams = g('threads'), g('conns'), g('h2_conns'), g('h2_streams')

    cert, key = write_configs(tmp, up_port, g('key_type'))
    up = start(['nginx', '-p', f'{tmp}/up', '-c', f'{tmp}/up/nginx.conf'], f'{tmp}/up/out.log')
    if not wait_port(up_port, up):
        die('upstream nginx did not start: ' + open(f'{tmp}/up/out.log').read()[-500:])
    got = curl(f'http://{LOOP}:{up_port}/')
    if not got.startswith(f'200 {BODY_BYTES}'):
        die(f'upstream sanity check failed: {got}')
    log(f'upstream nginx (1 worker) on :{up_port}, pid {up.pid}')

    relay_bin = None
    for c in cands:
        c.log = f'{tmp}/{c.name}.log'
        if c.kind == 'haproxy':
            cmd = haproxy_cmd(tmp, c.name, c.http, c.https, up_port)
        elif c.kind == 'nginx':
            cmd = nginx_cmd(tmp, c.name, c.http, c.https, up_port, cert, key)
        elif c.kind == 'relay':
            relay_bin = f'{tmp}/relay'
            r = subprocess.run(['cc', '-O2', '-pthread', '-o', relay_bin, f'{HERE}/relay.c'],
                               capture_output=True, text=True, timeout=120)
            if r.returncode:
                die('cannot build relay.c: ' + r.stderr)
            cmd = [relay_bin, str(c.http), str(up_port), '2']
        elif c.kind == 'floor':
            cmd = [c.path, f'{LOOP}:{c.https}', f'{LOOP}:{up_port}', f'{tmp}/certs']
        else:
            cmd = switchyard_cmd(tmp, c.name, c.path, c.http, c.https, up_port, c.access_log)
        c.proc = start(cmd, c.log)
        ok = (c.kind == 'floor' or wait_port(c.http, c.proc)) and \
            (c.https is None or wait_port(c.https, c.proc, 5))
        if not ok:
            die(f'{c.name} did not listen: ' + open(c.log, errors='replace').read()[-800:])
        if c.kind == 'switchyard':   # ready = everything started (the TLS ticketer's entropy too)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and 'switchyard ready' not in \
                    open(c.log, errors='replace').read(65536):
                time.sleep(0.1)
        got = curl(f'http://{LOOP}:{c.http}/') if c.kind != 'floor' else f'200 {BODY_BYTES}'
        if not got.startswith(f'200 {BODY_BYTES}'):
            die(f'{c.name}: plain sanity check failed: {got!r}')
        if c.https:
            got = curl(f'https://{LOOP}:{c.https}/', http2=True)
            if not got.startswith(f'200 {BODY_BYTES}'):
                die(f'{c.name}: TLS sanity check failed: {got!r}')
            if not got.endswith(' 2'):
                log(f'WARNING: {c.name} did not negotiate h2 via ALPN ({got})')
        c.startup = open(c.log, errors='replace').read(4096)
        log(f'{c.name} ({c.kind}) on :{c.http}' + (f' / :{c.https}' if c.https else '') +
            f', pgid {c.proc.pid}')

    def cands_for(test):
        cs = [c for c in cands if (c.tls or test == 'h1') and (c.kind != 'relay' or test == 'h1')
              and (c.kind != 'floor' or test == 'h2')]
        if test == 'h1':
            cs = [Cand('direct', 'direct', up_port)] + cs
        return cs

    by_name = {c.name: c for c in cands}
    by_name['direct'] = Cand('direct', 'direct', up_port)

    def load_cmd(test, c, seconds, h2log=None):
        port = c.http if test == 'h1' else c.https
        scheme = 'http' if test == 'h1' else 'https'
        url = f'{scheme}://{LOOP}:{port}/'
        if test == 'h2':
            cmd = ['h2load', f'-t{threads}', f'-c{h2_conns}', f'-m{h2_streams}', f'-D{seconds}']
            if h2log:
                cmd.append(f'--log-file={h2log}')
            return cmd + [url]
        cmd = ['wrk', f'-t{threads}', f'-c{conns}', f'-d{seconds}s', '--latency']
        if test == 'handshake':
            cmd += ['-H', 'Connection: close']
        return cmd + [url]

    meta = {
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'host': {'cpus': os.cpu_count(), 'model': cpu_model(), 'kernel': os.uname().release},
        'versions': versions(cands),
        'knobs': {k: g(k) for k in ('rounds', 'duration', 'warmup', 'cooldown', 'max_foreign',
                                    'retries', 'seed', 'boot',
                                    'threads', 'conns', 'h2_conns', 'h2_streams', 'key_type',
                                    'access_log', 'tests')},
        'candidates': [{'name': c.name, 'kind': c.kind, 'path': c.path,
                        'access_log': c.access_log} for c in cands],
        'loadavg_before': open('/proc/loadavg').read().split()[:3],
    }
    meta['idle_before'] = idle_share()
    if meta['idle_before'] < 0.9:
        log(f'WARNING: CPU only {100 * meta["idle_before"]:.0f} % idle before start: another '
            'workload is running, expect wide intervals')
    runs = []
    orders = Orders(g('seed'))
    n_loads = sum(len(cands_for(t)) for t in tests)
    per = duration + warmup + cooldown + 0.5
    log(f'{rounds} rounds x {n_loads} loads of {duration} s (+{warmup:g} s warm-up, '
        f'+{cooldown:g} s pause): about {rounds * n_loads * per / 60:.0f} min; results in '
        f'{results_dir}')
    t_start = time.monotonic()
    budget = [math.ceil(rounds * n_loads / 4)]   # repeats of loads disturbed by other work

    def save():
        with open(f'{results_dir}/compare.json', 'w') as fh:
            json.dump({'meta': meta, 'runs': runs}, fh, indent=1)

    def one(test, c, rnd, pos, order, attempt):
        """One measured load (after its warm-up); appends its row to runs, returns it."""
        name = c.name
        if warmup > 0:
            run_bounded(load_cmd(test, c, warmup), warmup + 30)
        h2log = f'{shm}/h2.log' if test == 'h2' else None
        pg = c.proc.pid if c.proc else None
        b_c = group_cpu(pg) if pg else (0, 0)
        b_u, b_lg, b_m, t0 = group_cpu(up.pid), children_cpu(), machine_cpu(), time.monotonic()
        rc, text = run_bounded(load_cmd(test, c, duration, h2log), duration + 30)
        t1 = time.monotonic()
        a_c = group_cpu(pg) if pg else (0, 0)
        a_u, a_lg, a_m = group_cpu(up.pid), children_cpu(), machine_cpu()
        raw = f'{results_dir}/raw/{test}.{name}.r{rnd + 1}' + (f'.{attempt}' if attempt else '')
        with open(raw + '.txt', 'w') as fh:
            fh.write(text)
        if test == 'h2':
            res = parse_h2load(text, read_h2log(h2log))
            try:
                os.unlink(h2log)
            except OSError:
                pass
        else:
            res = parse_wrk(text)
        if c.kind == 'switchyard':     # keep the access log from filling the disk
            try:
                os.truncate(c.log, 0)
            except OSError:
                pass
        for cc in cands:               # a candidate that died ends the run
            if cc.proc.poll() is not None:
                die(f'{cc.name} exited (rc {cc.proc.returncode}); startup log:\n{cc.startup}')
        if rc != 0 or res is None or res['requests'] == 0:
            log(f'  r{rnd + 1} {test} {name}: FAILED (rc {rc}): {text[-300:]!r}')
            runs.append({'round': rnd + 1, 'test': test, 'cand': name, 'pos': pos,
                         'failed': True})
            save()
            return None
        n = res['requests']
        wall = t1 - t0
        proxy_u, proxy_s = a_c[0] - b_c[0], a_c[1] - b_c[1]
        upstream = sum(a_u) - sum(b_u)
        lg = a_lg - b_lg
        busy, steal = a_m[0] - b_m[0], a_m[1] - b_m[1]
        row = dict(res, round=rnd + 1, test=test, cand=name, pos=pos, attempt=attempt,
                   after=order[pos - 1] if pos else None, t=round(t0 - t_start, 2),
                   wall_s=wall,
                   proxy_user_us=1e6 * proxy_u / n if pg else None,
                   proxy_sys_us=1e6 * proxy_s / n if pg else None,
                   proxy_us=1e6 * (proxy_u + proxy_s) / n if pg else None,
                   upstream_us=1e6 * upstream / n, loadgen_us=1e6 * lg / n,
                   foreign_cores=max(0.0, busy - proxy_u - proxy_s - upstream - lg) / wall,
                   steal_cores=steal / wall)
        runs.append(row)
        save()
        px = f'{row["proxy_us"]:.1f}' if pg else '-'
        log(f'  r{rnd + 1} {test:9s} {name:8s} {row["rps"]:8.0f} rps  p99 '
            f'{row["p99_ms"]:6.2f} ms  CPU/req proxy {px} us, loadgen '
            f'{row["loadgen_us"]:.1f} us, foreign {row["foreign_cores"]:.2f} cores'
            + (f'  {res["errors"]} ERRORS' if res['errors'] else '')
            + (f'  proto {res["proto"]}!' if res.get('proto') not in (None, 'h2') else ''))
        return row

    for rnd in range(rounds):
        k = rnd % len(tests)
        for test in tests[k:] + tests[:k]:
            order = orders.get(test, [c.name for c in cands_for(test)], rnd)
            for pos, name in enumerate(order):
                c = by_name[name]
                for attempt in range(retries + 1):
                    row = one(test, c, rnd, pos, order, attempt)
                    if row is None or row['foreign_cores'] <= max_foreign:
                        break
                    if attempt < retries and budget[0] > 0:
                        budget[0] -= 1
                        log(f'  (foreign CPU {row["foreign_cores"]:.2f} > MAX_FOREIGN='
                            f'{max_foreign:g} cores: repeating this load)')
                        row['discarded'] = True
                        time.sleep(cooldown)
                    else:
                        row['noisy'] = True
                        if budget[0] == 0:
                            log('  (no repeats left: RETRIES cover at most a quarter of the loads)')
                            budget[0] = -1
                        break
                time.sleep(cooldown)
        log(f'round {rnd + 1}/{rounds} done, {(time.monotonic() - t_start) / 60:.1f} min')
    meta['elapsed_s'] = round(time.monotonic() - t_start)
    meta['idle_after'] = idle_share()
    meta['loadavg_after'] = open('/proc/loadavg').read().split()[:3]
    save()
    md = report({'meta': meta, 'runs': runs})
    with open(f'{results_dir}/compare.md', 'w') as fh:
        fh.write(md)
    print(md, end='')
    log(f'results in {results_dir}/ (compare.json, compare.md, raw/)')
    return 0


def cpu_model():
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return '?'


# ================================================================= report ==

def fmt_iv(s, digits=2, short=False):
    """**median** [lo, hi], then ✓ (within ±5 %) or the half-width and the rounds for ±5 %."""
    if not s or s.get('n', 0) == 0:
        return 'n/a'
    mark = '' if s['method'] == 'order statistics' else 'b'
    txt = f'**{s["median"]:.{digits}f}** [{s["lo"]:.{digits}f}, {s["hi"]:.{digits}f}]{mark}'
    if short:
        return txt
    if s['narrow']:
        return txt + ' ✓'
    if s['method'] == 'bootstrap':
        return txt + f' ±{100 * s["half_width"]:.1f} % ({s["n"]} round{"s" if s["n"] > 1 else ""})'
    need = s.get('rounds_needed')
    return txt + f' ±{100 * s["half_width"]:.1f} %, ' + (f'~{need} rounds' if need else
                                                        '> 1000 rounds')


def pairs_for(test, names, kinds):
    """(candidate, reference) pairs reported for a test."""
    sy = [n for n in names if kinds.get(n) == 'switchyard']
    out = []
    for ref in ('haproxy', 'nginx'):
        if ref in names:
            out += [(n, ref) for n in names if n != ref and n != 'direct'
                    and not (ref == 'nginx' and n == 'haproxy')]
    out += [(n, sy[0]) for n in sy[1:]]
    if 'relay' in names:
        out += [(n, 'relay') for n in sy]
    if 'floor' in names:
        out += [(n, 'floor') for n in sy]
    if 'direct' in names:
        out += [(n, 'direct') for n in names if n != 'direct']
    return out


def capacity(r, cpus):
    """CPU-bound requests/s: what the machine's CPUs would serve if the proxy, the upstream and
    the load generator had them to themselves, at the CPU per request measured in this load.
    The box is saturated in every load (those three plus 'foreign' add up to all CPUs), so
    requests/s = (CPUs - foreign) / CPU per request, and this takes the co-tenant out."""
    tot = (r.get('proxy_us') or 0) + r['upstream_us'] + r['loadgen_us']
    return cpus * 1e6 / tot if tot > 0 else float('nan')


def analyse(data):
    meta, runs = data['meta'], data['runs']
    cpus = meta['host']['cpus']
    seed = meta['knobs']['seed']
    boot = meta['knobs'].get('boot', 10000)
    kinds = {c['name']: c['kind'] for c in meta['candidates']}
    kinds['direct'] = 'direct'
    good = [r for r in runs if not r.get('failed') and not r.get('discarded')]
    tests = [t for t in meta['knobs']['tests'] if any(r['test'] == t for r in good)]
    cells, ratios = {}, {}
    for t in tests:
        rs = [r for r in good if r['test'] == t]
        names = []
        for r in rs:
            if r['cand'] not in names:
                names.append(r['cand'])
        order = ['direct'] + [c['name'] for c in meta['candidates']]
        names.sort(key=order.index)
        by = {(r['cand'], r['round']): r for r in rs}
        for n in names:
            mine = [r for r in rs if r['cand'] == n]
            cells[(t, n)] = {
                'rounds': len(mine),
                'rps': median([r['rps'] for r in mine]),
                'cap': median([capacity(r, cpus) for r in mine]),
                'util': median([r['rps'] / capacity(r, cpus) for r in mine]),
                'p99_ms': median([r['p99_ms'] for r in mine if math.isfinite(r['p99_ms'])]),
                'proxy_us': median([r['proxy_us'] for r in mine if r['proxy_us'] is not None])
                if n != 'direct' else None,
                'proxy_user_us': median([r['proxy_user_us'] for r in mine
                                         if r['proxy_user_us'] is not None])
                if n != 'direct' else None,
                'upstream_us': median([r['upstream_us'] for r in mine]),
                'loadgen_us': median([r['loadgen_us'] for r in mine]),
                'errors': sum(r['errors'] for r in mine),
                'failed': sum(1 for r in runs if r.get('failed') and r['test'] == t
                              and r['cand'] == n),
            }
        for a, b in pairs_for(t, names, kinds):
            common = sorted(rnd for (n, rnd) in by if n == a and (b, rnd) in by)
            tp = [by[(a, r)]['rps'] / by[(b, r)]['rps'] for r in common]
            cap = [capacity(by[(a, r)], cpus) / capacity(by[(b, r)], cpus) for r in common]
            cpu = ([by[(a, r)]['proxy_us'] / by[(b, r)]['proxy_us'] for r in common
                    if by[(b, r)]['proxy_us']] if b != 'direct' else [])
            ratios[(t, a, b)] = {
                'rounds': common,
                'rps': summarise(tp, f'{t}/{a}/{b}/rps', seed, boot),
                'cap': summarise(cap, f'{t}/{a}/{b}/cap', seed, boot),
                'cpu': summarise(cpu, f'{t}/{a}/{b}/cpu', seed, boot) if cpu else None,
            }
    return tests, cells, ratios, kinds


TARGETS = [   # (test, metric, comparison, threshold, text) — issue 22, per switchyard build
    ('h2', 'rps', '>=', 1.10, 'h2 ≥ 1.1× haproxy (req/s)'),
    ('h2', 'cap', '>=', 1.10, 'h2 ≥ 1.1× haproxy (CPU-bound req/s)'),
    ('handshake', 'rps', '>=', 1.20, 'TLS handshakes ≥ 1.2× haproxy (req/s)'),
    ('handshake', 'cap', '>=', 1.20, 'TLS handshakes ≥ 1.2× haproxy (CPU-bound req/s)'),
    ('h2', 'cpu', '<=', 1.00, 'CPU per h2 request ≤ haproxy'),
]


def verdict(s, op, thr):
    if not s or s.get('n', 0) == 0:
        return 'n/a'
    if s['method'] != 'order statistics':
        return f'no verdict from {s["n"]} rounds'
    if op == '>=':
        return 'met' if s['lo'] >= thr else 'missed' if s['hi'] < thr else 'undecided'
    return 'met' if s['hi'] <= thr else 'missed' if s['lo'] > thr else 'undecided'


def fmt_util(cells):
    parts = []
    for (t, n), c in cells.items():
        if n == 'haproxy':
            parts.append(f'{t} {100 * c["util"]:.0f} %')
    return ', '.join(parts) if parts else 'n/a'


POOL_KNOBS = ('duration', 'warmup', 'cooldown', 'threads', 'conns', 'h2_conns', 'h2_streams',
              'key_type')


def pool(datas, names):
    """Several runs as one sample: their rounds renumbered one after another. Each round pairs
    its candidates seconds apart, so rounds of runs with the same loads and the same binaries
    are alike. Refuses runs whose loads differ, or where one name stands for different
    binaries (path, size and modification time, as recorded)."""
    first = datas[0]['meta']
    cands, versions, runs, rounds, tests = [], dict(first['versions']), [], 0, []
    for d, name in zip(datas, names):
        meta = d['meta']
        for k in POOL_KNOBS:
            if meta['knobs'].get(k) != first['knobs'].get(k):
                die(f'cannot pool {name} with {names[0]}: {k} is {meta["knobs"].get(k)} there '
                    f'and {first["knobs"].get(k)} here (pool runs of the same loads only)')
        for c in meta['candidates']:
            seen = next((x for x in cands if x['name'] == c['name']), None)
            v = meta['versions'].get(c['name'])
            if seen is None:
                cands.append(c)
                versions[c['name']] = v
            elif (seen['kind'], seen['path'], seen.get('access_log')) != (
                    c['kind'], c['path'], c.get('access_log')) or versions[c['name']] != v:
                was = versions[c['name']] or seen['path']
                die(f'cannot pool {name}: its candidate {c["name"]} ({v or c["path"]}) is not '
                    f'the one of the same name in an earlier run ({was}); give different '
                    'binaries different names')
        tests += [t for t in meta['knobs']['tests'] if t not in tests]
        last = max((r['round'] for r in d['runs']), default=0)
        runs += [dict(r, round=r['round'] + rounds) for r in d['runs']]
        rounds += last
    metas = [d['meta'] for d in datas]
    meta = dict(first, versions=versions, candidates=cands,
                knobs=dict(first['knobs'], rounds=rounds, tests=tests),
                pooled=[f'{n} ({m["date"]}, {m["knobs"]["rounds"]} rounds)'
                        for n, m in zip(names, metas)],
                loadavg_after=metas[-1].get('loadavg_after', ['?']),
                idle_after=metas[-1].get('idle_after', float('nan')))
    if all('elapsed_s' in m for m in metas):
        meta['elapsed_s'] = sum(m['elapsed_s'] for m in metas)
    return {'meta': meta, 'runs': runs}


def report(data):
    meta, runs = data['meta'], data['runs']
    tests, cells, ratios, kinds = analyse(data)
    k = meta['knobs']
    good = [r for r in runs if not r.get('failed') and not r.get('discarded')]
    out = []
    w = out.append
    w(f'### compare.py run {meta["date"]}\n\n')
    if meta.get('pooled'):
        w(f'- **{len(meta["pooled"])} runs pooled** (rounds renumbered in order): '
          + '; '.join(meta['pooled']) + '\n')
    h = meta['host']
    w(f'- host: {h["cpus"]} CPU ({h["model"]}), kernel {h["kernel"]}; loadavg before '
      f'{" ".join(meta["loadavg_before"])}, after {" ".join(meta.get("loadavg_after", ["?"]))}; '
      f'CPU idle before/after {100 * meta["idle_before"]:.0f} %/'
      f'{100 * meta.get("idle_after", float("nan")):.0f} %\n')
    fc = sorted(r['foreign_cores'] for r in good)
    st = sorted(r['steal_cores'] for r in good)
    if fc:
        w(f'- foreign CPU during the loads (machine busy time minus proxy, upstream and load '
          f'generator; includes kernel threads): median {fc[len(fc) // 2]:.2f}, max {fc[-1]:.2f} '
          f'cores; steal median {st[len(st) // 2]:.2f}, max {st[-1]:.2f}\n')
        sat = sorted(r['rps'] / capacity(r, h['cpus']) + r['foreign_cores'] / h['cpus']
                     for r in good if r['test'] != 'h1' or r['cand'] != 'direct')
        w(f'- the three plus that foreign work used {100 * sat[0]:.0f}–{100 * sat[-1]:.0f} % '
          f'(median {100 * sat[len(sat) // 2]:.0f} %) of the CPUs in the proxied loads\n')
    v = meta['versions']
    vs = [f'{n}: {v[n]}' for n in ('haproxy', 'nginx', 'wrk', 'h2load', 'openssl') if n in v]
    if vs:
        w('- ' + ', '.join(vs) + '\n')
    for c in meta['candidates']:
        if c['kind'] == 'switchyard':
            off = ', **access log off**' if c.get('access_log') == 'off' else ''
            w(f'- switchyard `{c["name"]}` = {v.get(c["name"], c["path"])}{off}\n')
    failed = [r for r in runs if r.get('failed')]
    rep_ = sum(1 for r in runs if r.get('discarded'))
    noisy = sum(1 for r in good if r.get('noisy'))
    w(f'- {k["rounds"]} rounds × {k["duration"]} s per load (warm-up {k["warmup"]} s, pause '
      f'{k["cooldown"]} s), seed {k["seed"]}, cert {k["key_type"]}, switchyard access log '
      f'{k["access_log"]}; {len(good)} loads' + (f', **{len(failed)} failed**' if failed else '')
      + (f', total {meta["elapsed_s"] / 60:.1f} min' if 'elapsed_s' in meta else '') + '\n')
    if 'max_foreign' in k:
        w(f'- a load during which other work took more than {k["max_foreign"]:g} cores is '
          f'repeated (up to {k["retries"]} times, for at most a quarter of the loads): {rep_} '
          f'repeated, {noisy} kept over the limit\n')
    w('- load: h1/https/handshake `wrk -t{0} -c{1}` (handshake with `Connection: close`), h2 '
      '`h2load -t{0} -c{2} -m{3}`; 1 KiB answers from one nginx worker\n\n'
      .format(k['threads'], k['conns'], k['h2_conns'], k['h2_streams']))

    w('Medians over the rounds. CPU is user+system time per completed request from /proc, of '
      'the whole process group (all threads and workers). "CPU-bound req/s" = CPUs ÷ (proxy + '
      'load generator + upstream CPU per request): the rate if those three had the machine to '
      'themselves. It is a model: it holds while the three saturate the CPUs (see the line '
      'above: then req/s = (CPUs − foreign) ÷ CPU per request), and it takes the co-tenants out '
      'of the throughput. Share of the CPUs the three got (median of haproxy\'s loads): '
      f'{fmt_util(cells)}. The ÷ haproxy columns are '
      'medians of per-round ratios with their 95 % intervals (see below).\n\n')
    w('| test | candidate | req/s | CPU-bound req/s | p99 | proxy CPU µs/req (user) | load gen '
      'CPU µs/req | upstream CPU µs/req | req/s ÷ haproxy [95 %] | CPU-bound ÷ haproxy [95 %] | '
      'CPU/req ÷ haproxy [95 %] |\n')
    w('|---|---|---|---|---|---|---|---|---|---|---|\n')
    for t in tests:
        for (tt, n), c in cells.items():
            if tt != t:
                continue
            rr = ratios.get((t, n, 'haproxy'))
            px = (f'{c["proxy_us"]:.1f} ({c["proxy_user_us"]:.1f})'
                  if c['proxy_us'] is not None else '—')
            extra = ''
            if c['errors']:
                extra += f' ({c["errors"]} errors)'
            if c['failed']:
                extra += f' ({c["failed"]} failed)'
            w(f'| {TEST_TITLE[t]} | {n} | {c["rps"]:.0f}{extra} | {c["cap"]:.0f} | '
              f'{c["p99_ms"]:.2f} ms | {px} | {c["loadgen_us"]:.1f} | {c["upstream_us"]:.1f} | '
              f'{fmt_iv(rr["rps"]) if rr else "—"} | {fmt_iv(rr["cap"]) if rr else "—"} | '
              f'{fmt_iv(rr["cpu"]) if rr and rr["cpu"] else "—"} |\n')
    w('\nOther ratios. All ratios are per round (candidate ÷ reference measured in the same '
      'round, seconds apart), **median** [95 % interval]. The interval is the distribution-free '
      'one on the median from order statistics (needs ≥ 6 rounds); "b" marks the bootstrap '
      'percentile interval, used with fewer rounds (it is then too short to trust: with 3 rounds '
      'it is their range, which holds the true median only 75 % of the time). ✓ = an '
      'order-statistics interval within ±5 % of the median (half its width < 5 %); otherwise the '
      'half-width and the rounds that would bring it to ±5 % at the spread seen. CPU/req ratios '
      'below 1 = cheaper.\n\n')
    w('| test | ratio | rounds | req/s | CPU-bound req/s | CPU/req |\n|---|---|---|---|---|---|\n')
    for (t, a, b), r in ratios.items():
        if b == 'haproxy':
            continue
        w(f'| {TEST_TITLE[t]} | {a} ÷ {b} | {r["rps"]["n"]} | {fmt_iv(r["rps"])} | '
          f'{fmt_iv(r["cap"])} | {fmt_iv(r["cpu"]) if r["cpu"] else "—"} |\n')

    sy = [c['name'] for c in meta['candidates'] if c['kind'] == 'switchyard']
    if sy and any(c['name'] == 'haproxy' for c in meta['candidates']):
        w('\nTargets of issue 22 (met = the whole interval on the right side of the line, missed '
          '= on the wrong side, undecided = the interval contains the line). "no worse than '
          f'today" compares each build with `{sy[0]}` (the first --sy) and counts as met when the '
          'interval of the ratio lies above 0.95 (the ±5 % the instrument resolves). No verdict '
          'below 6 rounds.\n\n')
        w('| target | ' + ' | '.join(sy) + ' |\n|---|' + '---|' * len(sy) + '\n')
        rows = list(TARGETS)
        for t in ('h1', 'https'):
            for metric, what in (('rps', 'req/s'), ('cap', 'CPU-bound req/s')):
                rows.append((t, metric, 'same', 0.95, f'{TEST_TITLE[t]}: no worse than today vs '
                                                      f'haproxy ({what})'))
        for t, metric, op, thr, text in rows:
            cellv = []
            for n in sy:
                if op == 'same':
                    r = ratios.get((t, n, 'haproxy'))
                    s = r[metric] if r else None
                    txt = f'÷ haproxy {fmt_iv(s, short=True)}' if s else 'n/a'
                    if n != sy[0]:
                        rb = ratios.get((t, n, sy[0]))
                        sb = rb[metric] if rb else None
                        if sb and sb.get('n'):
                            vd = ('met' if sb['lo'] >= thr else
                                  'missed' if sb['hi'] < 1 else 'undecided')
                            if sb['method'] != 'order statistics':
                                vd = f'no verdict from {sb["n"]} rounds'
                            txt += f'; ÷ {sy[0]} {fmt_iv(sb, short=True)}: {vd}'
                    else:
                        txt += ' (the reference build)'
                    cellv.append(txt)
                    continue
                r = ratios.get((t, n, 'haproxy'))
                s = (r[metric] if r else None)
                cellv.append(f'{fmt_iv(s, short=True)}: {verdict(s, op, thr)}' if s else 'n/a')
            w(f'| {text} | ' + ' | '.join(cellv) + ' |\n')
    return ''.join(out)


# =============================================================== selftest ==

def selftest():
    fails = []

    def check(cond, what):
        print(('ok   ' if cond else 'FAIL ') + what)
        if not cond:
            fails.append(what)

    # 1. order-statistics ranks against the published sign-test table (95 %)
    table = {6: (1, 6), 8: (1, 8), 9: (2, 8), 10: (2, 9), 12: (3, 10), 15: (4, 12),
             20: (6, 15), 25: (8, 18), 30: (10, 21)}
    for n, want in table.items():
        r = os_median_ranks(n)
        check(r is not None and r[:2] == want and r[2] >= 0.95,
              f'order-statistics ranks n={n}: {r[:2] if r else None} == {want}, '
              f'coverage {r[2] if r else 0:.4f} >= 0.95')
    check(os_median_ranks(5) is None, 'no distribution-free 95 % interval with 5 rounds')

    # 2. bootstrap: constant data, odd/even medians, bounds ordered and containing the median
    rng = random.Random(1)
    check(bootstrap_median_ci([1.0] * 7, rng, 2000) == (1.0, 1.0), 'bootstrap of constant data')
    xs = [0.9, 0.95, 1.0, 1.05, 1.1, 1.02, 0.98]
    lo, hi = bootstrap_median_ci(xs, rng, 5000)
    check(lo <= median(xs) <= hi and 0.9 <= lo and hi <= 1.1, f'bootstrap [{lo:.3f}, {hi:.3f}] '
          'contains the median, within the data range')
    check(bootstrap_median_ci([1.0, 2.0, 3.0], random.Random(2), 5000) == (1.0, 3.0),
          'bootstrap with 3 values = their range (each bound has > 2.5 % mass)')

    # 3. coverage on synthetic log-normal ratios with a known median (1.03)
    rng = random.Random(42)
    trials = 400
    for n, sigma in ((8, 0.10), (15, 0.10), (24, 0.05)):
        cov_os = cov_b = 0
        for _ in range(trials):
            xs = [1.03 * math.exp(rng.gauss(0, sigma)) for _ in range(n)]
            a = os_median_ci(xs)
            cov_os += a[0] <= 1.03 <= a[1]
            b = bootstrap_median_ci(xs, rng, 600)
            cov_b += b[0] <= 1.03 <= b[1]
        cov_os /= trials
        cov_b /= trials
        check(cov_os >= 0.93, f'order-statistics coverage n={n} σ={sigma}: {cov_os:.3f} '
              f'(nominal >= {os_median_ranks(n)[2]:.3f})')
        check(0.85 <= cov_b <= 0.995, f'bootstrap coverage n={n} σ={sigma}: {cov_b:.3f} '
              '(percentile bootstrap of a median runs a little under 95 % at small n)')
    # heavy tails: 1 round in 8 hit by a co-tenant (ratio x0.7); the median's interval stays
    # centred while the mean would be dragged
    cov = 0
    for _ in range(trials):
        xs = [1.0 * math.exp(rng.gauss(0, 0.04)) * (0.7 if rng.random() < 0.125 else 1.0)
              for _ in range(20)]
        a = os_median_ci(xs)
        cov += a[0] <= 1.0 <= a[1]
    check(cov / trials >= 0.80, f'order statistics, 1 in 8 rounds disturbed (x0.7), n=20: '
          f'{cov / trials:.3f} contain the undisturbed median')

    # 4. rounds needed: estimated from a long pilot, that many rounds give about ±5 %
    for sigma in (0.05, 0.10, 0.15):
        rng = random.Random(7)
        n = rounds_for([math.exp(rng.gauss(0, sigma)) for _ in range(400)])
        halves = []
        for _ in range(300):
            xs = [math.exp(rng.gauss(0, sigma)) for _ in range(n)]
            a = os_median_ci(xs)
            halves.append((a[1] - a[0]) / (2 * median(xs)))
        hw = median(halves)
        check(0.030 <= hw <= 0.055, f'σ={sigma}: rounds_for says {n}; that many rounds give a '
              f'typical half-width of ±{100 * hw:.1f} % (aim ±5 %)')

    # 5. Williams designs: positions and first-order neighbours balanced
    for n in range(1, 8):
        rows = williams(n)
        pos_ok = all(len({r[p] for r in rows}) == n and
                     all(sum(r[p] == c for r in rows) == len(rows) // n for c in range(n))
                     for p in range(n))
        pairs = {}
        for r in rows:
            for x, y in zip(r, r[1:]):
                pairs[(x, y)] = pairs.get((x, y), 0) + 1
        nb_ok = n == 1 or (len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1)
        check(pos_ok and nb_ok and all(sorted(r) == list(range(n)) for r in rows),
              f'Williams design n={n}: {len(rows)} rows, positions and neighbours balanced')
    o = Orders(3)
    seqs = [tuple(o.get('h2', ['haproxy', 'nginx', 'a', 'b'], r)) for r in range(4)]
    check(len({s[0] for s in seqs}) == 4, f'4 rounds of 4 candidates: each first once ({seqs})')
    check(Orders(3).get('h2', ['haproxy', 'nginx', 'a', 'b'], 1) == list(seqs[1]),
          'the same seed gives the same order')

    # 6. parsers
    wrk_out = """Running 3s test @ http://127.0.0.1:18610/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.38ms  512.00us  21.07ms   85.12%
    Req/Sec    23.41k     1.20k   26.05k    70.00%
  Latency Distribution
     50%    1.28ms
     75%    1.55ms
     90%    1.88ms
     99%    3.12ms
  139722 requests in 3.00s, 158.07MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  46555.52
Transfer/sec:     52.67MB
"""
    p = parse_wrk(wrk_out)
    check(p == {'requests': 139722, 'rps': 46555.52, 'p50_ms': 1.28, 'p99_ms': 3.12,
                'errors': 7}, f'parse_wrk: {p}')
    check(abs(to_ms('950.00us') - 0.95) < 1e-9 and to_ms('1.20s') == 1200 and
          to_ms('2.00m') == 120000,
          'latency units')
    h2_out = """finished in 3.00s, 45123.40 req/s, 52.34MB/s
requests: 135370 total, 135690 started, 135370 done, 135368 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 135368 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 157.03MB (164656543) total, 1.03MB (1082960) headers (space savings 95.39%)
Application protocol: h2
"""
    p = parse_h2load(h2_out, [1000 * i for i in range(1, 101)])
    check(p['requests'] == 135370 and p['rps'] == 45123.40 and p['errors'] == 2 and
          p['proto'] == 'h2' and abs(p['p99_ms'] - 99.01) < 1e-6,
          f'parse_h2load: {p}')

    # 7. pairing and report on a synthetic run: A/A at 1.00, B 10 % faster on h2 and cheaper
    rng = random.Random(5)
    runs = []
    for rnd in range(1, 9):
        drift = math.exp(rng.gauss(0, 0.15))      # the machine's round-to-round swing
        for t in ALL_TESTS:
            base = {'h1': 45e3, 'https': 35e3, 'h2': 45e3, 'handshake': 2e3}[t]
            names = (['direct'] if t == 'h1' else []) + ['haproxy', 'nginx', 'a', 'b']
            for pos, n in enumerate(names):
                f = {'direct': 2.0, 'haproxy': 1.0, 'nginx': 0.9, 'a': 1.0,
                     'b': 1.10 if t == 'h2' else 1.0}[n]
                rps = base * f * drift * math.exp(rng.gauss(0, 0.02))
                cpu = None if n == 'direct' else 20.0 / f * math.exp(rng.gauss(0, 0.01))
                runs.append({'round': rnd, 'test': t, 'cand': n, 'pos': pos, 'rps': rps,
                             'requests': int(rps * 3), 'p99_ms': 3.0, 'errors': 0,
                             'proxy_us': cpu, 'proxy_user_us': cpu and cpu / 4,
                             'upstream_us': 9.0, 'loadgen_us': 10.0, 'foreign_cores': 0.1,
                             'steal_cores': 0.0})
    runs.append({'round': 8, 'test': 'h1', 'cand': 'b', 'failed': True})
    runs = [r for r in runs if not (r['round'] == 8 and r['test'] == 'h1' and r['cand'] == 'b'
                                    and not r.get('failed'))]
    data = {'meta': {'date': 'synthetic', 'host': {'cpus': 2, 'model': 'x', 'kernel': 'y'},
                     'versions': {}, 'loadavg_before': ['0', '0', '0'], 'idle_before': 1.0,
                     'knobs': {'rounds': 8, 'duration': 3, 'warmup': 1, 'cooldown': 1,
                               'seed': 1, 'boot': 2000, 'threads': 2, 'conns': 64,
                               'h2_conns': 32, 'h2_streams': 10, 'key_type': 'ec',
                               'access_log': 'stdout', 'tests': list(ALL_TESTS)},
                     'candidates': [{'name': 'haproxy', 'kind': 'haproxy', 'path': None},
                                    {'name': 'nginx', 'kind': 'nginx', 'path': None},
                                    {'name': 'a', 'kind': 'switchyard', 'path': '/a'},
                                    {'name': 'b', 'kind': 'switchyard', 'path': '/b'}]},
            'runs': runs}
    tests, cells, ratios, _ = analyse(data)
    ab = ratios[('h1', 'b', 'a')]
    check(ab['rps']['n'] == 7 and 8 not in ab['rounds'],
          f'a round where one side failed is left out of the pair: rounds {ab["rounds"]}')
    s = ratios[('h2', 'b', 'a')]['rps']
    check(s['lo'] <= 1.10 <= s['hi'] and s['narrow'],
          f'synthetic h2 b÷a = {s["median"]:.3f} [{s["lo"]:.3f}, {s["hi"]:.3f}] contains 1.10, '
          'narrow although rounds swing ±15 % (pairing)')
    s = ratios[('https', 'b', 'a')]['rps']
    check(s['lo'] <= 1.0 <= s['hi'], f'synthetic https b÷a contains 1: [{s["lo"]:.3f}, '
          f'{s["hi"]:.3f}]')
    check(ratios[('h2', 'b', 'haproxy')]['cpu']['median'] < 0.95, 'CPU ratio of b on h2 < 1')
    md = report(data)
    check('| h2 ≥ 1.1× haproxy (req/s) |' in md and 'rounds' in md, 'report renders the targets')
    s = ratios[('h2', 'b', 'a')]['cap']
    check(1.03 < s['median'] < 1.07, f'CPU-bound req/s of b÷a on h2 follows its CPU: '
          f'{s["median"]:.3f} (39 µs per request against 20/1.1 + 19; expect 1.048)')
    both = pool([data, data], ['x', 'y'])
    _, _, pooled, _ = analyse(both)
    check(pooled[('h2', 'b', 'a')]['rps']['n'] == 2 * ratios[('h2', 'b', 'a')]['rps']['n']
          and '2 runs pooled' in report(both),
          'two runs pooled: twice the rounds of one, and the report says so')
    other = json.loads(json.dumps(data))
    other['meta']['candidates'][1]['path'] = '/elsewhere'
    try:
        pool([data, other], ['x', 'y'])
        check(False, 'pooling refuses one name for two binaries')
    except SystemExit:
        check(True, 'pooling refuses one name for two binaries')
    print(md if os.environ.get('SHOW') else '(SHOW=1 prints the synthetic report)')
    print(f'\n{len(fails)} failed' if fails else '\nall self-checks passed')
    return 1 if fails else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='Knobs are environment variables; see the header.')
    ap.add_argument('--sy', action='append', default=[], metavar='NAME=PATH',
                    help='a switchyard binary to compare (repeatable; the first is the reference '
                         'build for "A vs B")')
    ap.add_argument('--log-off', action='append', default=[], metavar='NAME',
                    help='run this --sy candidate with its access log off, whatever ACCESS_LOG '
                         'says (repeatable): one build with and without the log in one run')
    ap.add_argument('--relay', action='store_true',
                    help='also the zero-work TCP relay (benches/relay.c) on h1: the floor')
    ap.add_argument('--floor', metavar='PATH',
                    help='also examples/h2_floor.rs (built with --profile dist) on h2: the floor')
    ap.add_argument('--no-haproxy', action='store_true')
    ap.add_argument('--no-nginx', action='store_true')
    ap.add_argument('--selftest', action='store_true', help='check the statistics and exit')
    ap.add_argument('--report', metavar='JSON', nargs='+',
                    help='print the tables of a saved compare.json; of several, pooled as one '
                         'run (same loads, and each name the same binary in all)')
    args = ap.parse_args()
    if args.selftest:
        return selftest()
    if args.report:
        datas = []
        for path in args.report:
            with open(path) as fh:
                datas.append(json.load(fh))
        data = datas[0] if len(datas) == 1 else pool(datas, args.report)
        print(report(data), end='')
        return 0
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit(130))
    return run(args)


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        for p in list(reversed(started)):
            stop(p)
