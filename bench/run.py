#!/usr/bin/env python3
"""Whole-proxy benchmark: Portcullis side by side with nginx (and other peers where a
scenario has them), on one machine, in one run.

Method (the machines are shared and noisy, so absolute numbers drift between runs):
  * every server under test and the upstream are pinned to CPU 0, the load generator (wrk)
    to CPU 1 (`--upstream-cpu 1` moves the upstream beside the load generator); the "server
    CPU" and "load CPU" columns say how busy each CPU was: near 100 % on the load side, the load
    side may be what limits; well below 100 % on the servers' side, the server is not;
  * measurements are taken in rounds; in each round every proxy runs once, back to back, in
    alternating order; the ratio Portcullis/peer is computed within each round, and the
    median over rounds is reported, with the median absolute numbers;
  * `--connections` takes one count (default 64) or a list (`8,32,64,256`): each scenario
    runs its warm-up and rounds at each count in turn, on the same servers, and reports each
    count's table and ratios, then, against each peer, the ratios at every count and the worst
    of them: the lowest throughput ratio and the highest p99 ratio (`h2` has its own count);
  * CPU time per request (user + system, from /proc) of each proxy process is reported too:
    how much work each does per request, whatever else the machine is doing;
  * the "other" column is the CPU time of processes the bench did not start (builds beside
    it, say) and time the host stole, in % of one CPU; runs where it passed 5 % are marked
    `*`. Such work takes a CPU from the bench even at `nice 19`: with autogroup scheduling a
    build started from another session gets as much of a CPU as the bench. Whichever server
    runs then loses throughput and gets a p99 of several milliseconds (when it is wrk's CPU,
    the server's CPU goes partly idle too). Such runs are noise, not a property of the server;
    `--wait-quiet S` waits up to S seconds before each run for a second without such work.

Scenarios:
  plain          no authentication: plain reverse proxying;
  jwt-repeated   a route with `authenticate: [jwt]`, one RS256 token sent on every request
                 (after the first, Portcullis serves it from its verified-token cache);
  jwt-distinct   the same route, and a wrk Lua script cycling through more distinct valid
                 RS256 tokens than the verified-token cache holds, so every request costs
                 a signature verification;
  jwt-cedar      jwt-repeated, and 100 Cedar policies (one for this route, 99 for others)
                 judging every request;
  dpop           a route with `authenticate: [dpop]`: one DPoP-bound RS256 token and a
                 fresh ES256 proof on every request (proofs made in advance by PyJWT and
                 sent in order by a wrk script; each is accepted once).
  memory         RSS idle and with 10,000 concurrent keep-alive connections;
  h2             HTTP/2 (h2c) with many concurrent streams, driven by h2load;
  tls-new-conn   a new TLS 1.3 connection per request (wrk, `Connection: close`);
  jwt-propagate  jwt-repeated with identity propagation (an internal token and a header),
                 beside the same JWT route without it.
  latency        jwt-repeated at one fixed rate for every server (oha, corrected for
                 coordinated omission): p50/p99 at the same load.
  jwt-limit      jwt-repeated with a per-consumer rate limit that is never reached, on
                 memory and (with redis-server installed) on a local Redis, beside the
                 same route without it.
nginx (plain `proxy_pass`, no authentication) is the baseline in every scenario, sent the
same requests (it ignores the token): the ratio says what the security costs. In `plain`,
`jwt-repeated`, `jwt-distinct`, `jwt-cedar` and `latency`, `nginx-tuned` joins it: nginx as
operators tune it (`multi_accept on`, `tcp_nodelay on`, upstream `keepalive 128` over HTTP/1.1
with `Connection` cleared, `proxy_buffering on`, `Host $host`, `X-Forwarded-For`; nginx's
default `keepalive_requests` of 1,000 per upstream connection, and beyond 128 idle upstream
connections the rest are closed, which costs it at 256 connections). In `plain` every server
is sent a bearer token the size of the JWT scenarios' (unchecked), so that every server gets
the same request bytes in every scenario; `nginx-fwd` joins it there: nginx also sending the
upstream what Portcullis sends it on every request (`X-Forwarded-For`, `-Proto`, `-Host` and
`X-Request-Id`), the like-for-like comparison; the bar is set against plain nginx. HAProxy, when
installed, joins `plain` as a plain proxy and the JWT scenarios as `haproxy-jwt`, verifying
the same RS256 tokens with `jwt_verify` (alg, iss, aud, exp and the signature; it has no
cache, so every request costs a verification). Every JWT server is first checked to refuse
no token, an expired one, one for another audience and a forged signature.

    bench/run.py                              # all scenarios
    bench/run.py --rounds 9 --duration 5 --scenarios plain
    bench/run.py --rounds 5 --duration 5 --scenarios plain,jwt-repeated,jwt-distinct
    bench/run.py --rounds 5 --duration 5 --connections 8,32,64,256 --scenarios plain,jwt-repeated
    bench/run.py --wait-quiet 300 --connections 8,256      # on a machine shared with builds
    bench/run.py --json bench/out/results.json
    bench/run.py --binary /tmp/target/release/portcullis   # or PORTCULLIS_BIN=...
    bench/run.py --binary target/pgo/portcullis            # the profile-guided build (bench/pgo.py)
    bench/run.py --upstream-cpu 1 --scenarios plain,jwt-repeated,jwt-distinct

Needs: nginx, wrk (Debian packages; haproxy optional; h2load from nghttp2-client for h2; oha, `cargo install oha`, for latency), taskset, `cargo build --release`, and for the JWT
scenarios PyJWT and cryptography (tests/helpers/requirements.txt).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("PORTCULLIS_BIN") or os.path.join(ROOT, "target", "release", "portcullis")
SERVER_CPU = "0"
LOAD_CPU = "1"
# Where the fast upstream runs: beside the servers by default (its cost is in every server's
# throughput alike); `--upstream-cpu 1` moves it beside the load generator instead.
UPSTREAM_CPU = SERVER_CPU
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class Server:
    """A process pinned to the server CPU (or to `cpu`)."""

    running = []  # started and not yet stopped: with the load generators, the bench's own work

    def __init__(self, name, cmd, port, work, cpu=None):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", cpu or SERVER_CPU] + cmd, cwd=work, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, f"{name}-{port}.err"), "w"))
        Server.running.append(self)
        wait_port(port)

    def cpu_ticks(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self in Server.running:
            Server.running.remove(self)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def nginx_conf(work, port, body, events_extra=""):
    conf = os.path.join(work, f"nginx-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.error.log warn;
events {{ worker_connections 20000;{events_extra} }}
http {{
    access_log off;
    client_body_temp_path {work}/body-{port};
    proxy_temp_path {work}/proxy-{port};
    fastcgi_temp_path {work}/fcgi-{port};
    uwsgi_temp_path {work}/uwsgi-{port};
    scgi_temp_path {work}/scgi-{port};
    keepalive_requests 1000000;
    {body}
}}
""")
    return conf


def start_upstream(work):
    port = free_port()
    conf = nginx_conf(work, port, f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "hello from upstream\\n"; }}
    }}""")
    return Server("upstream", ["nginx", "-c", conf], port, work, cpu=UPSTREAM_CPU)


# What Portcullis adds to every request it forwards (README, "What the upstream receives"),
# for an nginx that does the same work: the like-for-like baseline beside the plain one.
NGINX_GATEWAY_HEADERS = """
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;"""


def start_nginx_proxy(work, upstream_port, listen_extra="", server_extra="", location_extra="", name="nginx"):
    port = free_port()
    conf = nginx_conf(work, port, f"""
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 1024; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096{listen_extra};
        {server_extra}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{location_extra}
        }}
    }}""")
    return Server(name, ["nginx", "-c", conf], port, work)


def start_nginx_tuned(work, upstream_port, name="nginx-tuned"):
    """nginx as operators tune it in front of an application: `multi_accept`, `tcp_nodelay`,
    a keep-alive pool of 128 upstream connections (HTTP/1.1, `Connection` cleared), response
    buffering, and the client's `Host` and `X-Forwarded-For` passed on. One worker, as every
    server here."""
    port = free_port()
    conf = nginx_conf(work, port, f"""
    tcp_nodelay on;
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}""", events_extra=" multi_accept on;")
    return Server(name, ["nginx", "-c", conf], port, work)


# The nginx baselines: sent every request, they authenticate none (never checked for refusals).
NGINX_BASELINES = ("nginx", "nginx-tuned", "nginx-fwd")


def bearer_token():
    """A bearer token of the size and shape of the JWT scenarios' (an RS256 access token, a
    2048-bit signature), for the plain scenario: every server is sent the same request bytes
    there as in the JWT scenarios. Not signed (nobody checks it there); no crypto needed."""
    import base64
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    header = {"alg": "RS256", "kid": "bench-rs256", "typ": "at+jwt"}
    claims = {"iss": JWT_ISSUER, "sub": "user-0", "aud": JWT_AUDIENCE, "client_id": "web-app",
              "scope": "orders:read orders:write profile", "iat": now, "exp": now + 3600, "jti": "bench-0"}
    part = lambda d: b64(json.dumps(d, separators=(",", ":")).encode())
    return f"{part(header)}.{part(claims)}.{b64(os.urandom(256))}"


def start_haproxy(work, upstream_port, idp=None, bind_extra=""):
    """HAProxy as a reverse proxy; with `idp`, verifying its RS256 JWTs with `jwt_verify`
    (signature, alg, iss, aud, exp), as HAProxy's documentation shows."""
    port = free_port()
    conf = os.path.join(work, f"haproxy-{port}.cfg")
    checks = ""
    if idp:
        checks = f"""
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m beg -i "bearer " }}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {JWT_ISSUER} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {JWT_AUDIENCE} }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{idp.public_pem}") -m int 1 }}"""
    with open(conf, "w") as f:
        f.write(f"""
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}{bind_extra}{checks}
    default_backend be
backend be
    http-reuse always
    server up 127.0.0.1:{upstream_port}
""")
    return Server("haproxy-jwt" if idp else "haproxy", ["haproxy", "-f", conf, "-db"], port, work)


def start_portcullis(work, upstream_port, routes_yaml, extra="", server_extra="", wrap=()):
    """Portcullis with one worker and no access log; `wrap` runs it under another program
    (`count.py`: callgrind)."""
    port, admin = free_port(), free_port()
    conf = os.path.join(work, f"portcullis-{port}.yaml")
    with open(conf, "w") as f:
        f.write(f"""
server:
  listen: 127.0.0.1:{port}
  workers: 1
{server_extra}admin:
  listen: 127.0.0.1:{admin}
access_log:
  enabled: false
log:
  level: warn
{extra}
routes:
{routes_yaml.replace("{upstream}", f"http://127.0.0.1:{upstream_port}")}
""")
    server = Server("portcullis", [*wrap, BINARY, "serve", "--config", conf], port, work)
    server.admin = admin
    return server


PLAIN_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [none]
"""

def cpu_busy_ticks(cpu):
    """(busy, total, tasks) clock ticks of one CPU so far, from /proc/stat; `tasks`: what
    processes ran (user, nice, system) and what the host stole, without interrupts."""
    for line in open("/proc/stat"):
        if line.startswith(f"cpu{cpu} "):
            t = [int(x) for x in line.split()[1:]]
            # idle and iowait are not busy; t[7] is steal
            return sum(t) - t[3] - t[4], sum(t), t[0] + t[1] + t[2] + (t[7] if len(t) > 7 else 0)
    return 0, 0, 0


def own_ticks():
    """Clock ticks of CPU time the bench's own processes have used so far: the servers still
    running, the load generators (and servers) it has waited for, and this script."""
    t = os.times()
    ticks = (t.user + t.system + t.children_user + t.children_system) * CLK_TCK
    for s in Server.running:
        try:
            ticks += s.cpu_ticks()
        except OSError:
            pass
    return ticks


class CpuBusy:
    """How busy the servers' CPU and the load generator's CPU were over a run. Near 100 % on
    the load side, the load generator (and whatever shares its CPU) rather than the server may
    be what limits the throughput; well below 100 % on the servers' side, the server was not
    what limited it either (the load side's latency, or a host that did not run the CPU).
    `other`: the CPU time of processes the bench did not start (other work, such as builds),
    and time the host stole, as a share of one CPU. Such work need not be low priority to the
    bench even at `nice 19`: with autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`)
    a build started from another session gets as much of a CPU as the bench, and whichever
    server runs at that moment loses throughput and gets a p99 of several milliseconds."""

    def __enter__(self):
        self.before = {cpu: cpu_busy_ticks(cpu) for cpu in (SERVER_CPU, LOAD_CPU)}
        self.own = own_ticks()
        return self

    def __exit__(self, *exc):
        busy, tasks, elapsed = {}, 0, 0
        for cpu, (busy0, total0, tasks0) in self.before.items():
            busy1, total1, tasks1 = cpu_busy_ticks(cpu)
            busy[cpu] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else None
            tasks += tasks1 - tasks0
            elapsed = max(elapsed, total1 - total0)
        self.server, self.load = busy[SERVER_CPU], busy[LOAD_CPU]
        self.other = max(0.0, tasks - (own_ticks() - self.own)) / elapsed if elapsed else 0.0


LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$")


def wrk(server, connections, duration, headers=(), script=None, scheme="http"):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(f"{scheme}://127.0.0.1:{server.port}/")
    before = server.cpu_ticks()
    with CpuBusy() as cpu:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ticks = server.cpu_ticks() - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {m.group(1): float(m.group(2)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(3)]
           for m in map(LATENCY.match, out.splitlines()) if m}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": requests,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "cpu_us_per_req": ticks / CLK_TCK * 1e6 / max(requests, 1),
        "server_cpu_busy": cpu.server,
        "load_cpu_busy": cpu.load,
        "other_cpu": cpu.other,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (1 if sock else 0),
    }


def rounds(servers, args, headers=(), scripts=None, load=None, counts=None):
    """For each connection count (`--connections`, or `counts`), in turn: a warm-up run of
    every server, then `args.rounds` rounds, each running every server once, alternating the
    order. Returns {connections: {server: [runs]}}. `scripts` maps a server's name to the wrk
    Lua script that makes its requests; `load` replaces wrk: a function (server, duration,
    name, connections) -> one run's figures."""
    scripts = scripts or {}
    measure = load or (lambda s, d, name, c: wrk(s, c, d, headers, scripts.get(name)))

    def load(s, d, name, c):
        wait_quiet(args.wait_quiet)
        return measure(s, d, name, c)

    names = list(servers)
    by_count = {}
    for c in counts or args.connections:
        for name, s in servers.items():  # warm-up: pools filled (at this count), caches hot
            load(s, 2, name, c)
        runs = by_count[c] = {name: [] for name in servers}
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                runs[name].append(load(servers[name], args.duration, name, c))
    return by_count


H2_CONNECTIONS = 8
H2_STREAMS = 100


def h2load(server, duration):
    """h2load over cleartext HTTP/2 (prior knowledge): H2_CONNECTIONS connections with
    H2_STREAMS concurrent streams each, for `duration` seconds."""
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{duration}",
           f"http://127.0.0.1:{server.port}/"]
    before = server.cpu_ticks()
    with CpuBusy() as cpu:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ticks = server.cpu_ticks() - before
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    mean_ms = float(mean.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)] if mean else None
    status = re.search(r"status codes: (\d+) 2xx", out)
    return {
        "rps": rps,
        "p50_ms": mean_ms,  # h2load reports the mean, not percentiles
        "p99_ms": None,
        "cpu_us_per_req": ticks / CLK_TCK * 1e6 / max(int(done.group(1)), 1),
        "server_cpu_busy": cpu.server,
        "load_cpu_busy": cpu.load,
        "other_cpu": cpu.other,
        "errors": int(done.group(3)) + (int(done.group(1)) - int(status.group(1)) if status else 0),
    }


def scenario_h2(work, args):
    """(f) HTTP/2 (cleartext, prior knowledge) with many streams: 8 connections x 100
    concurrent streams (h2load), no authentication; the upstream hop is HTTP/1.1 for all.
    The p50 column is h2load's mean request time."""
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PLAIN_ROUTE),
        "nginx": start_nginx_proxy(work, upstream.port, listen_extra=" http2"),
    }
    if shutil.which("haproxy"):
        servers["haproxy"] = start_haproxy(work, upstream.port, bind_extra=" proto h2")
    try:
        runs = rounds(servers, args, load=lambda s, d, name, c: h2load(s, d), counts=[H2_CONNECTIONS])
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs}


def self_signed(work):
    """A P-256 certificate for 127.0.0.1 and its key (PEM files), and both in one file."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = {k: os.path.join(work, f"tls-{k}.pem") for k in ("cert", "key", "both")}
    for k, data in (("cert", cert_pem), ("key", key_pem), ("both", cert_pem + key_pem)):
        with open(paths[k], "wb") as f:
            f.write(data)
    return paths


def scenario_tls_new_conn(work, args):
    """(g) A new TLS connection per request (wrk with `Connection: close` over HTTPS, TLS 1.3,
    ECDSA P-256 certificate), no authentication. Every server issues session tickets, as
    Portcullis does by default, and wrk offers its last session again (OpenSSL keeps it across
    SSL_clear), so handshakes may be resumptions, the same for all."""
    tls = self_signed(work)
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PLAIN_ROUTE,
                                       server_extra=f"  tls: {{ cert: {tls['cert']}, key: {tls['key']} }}\n"),
        "nginx": start_nginx_proxy(work, upstream.port, listen_extra=" ssl",
                                   server_extra=f"ssl_certificate {tls['cert']}; ssl_certificate_key {tls['key']}; "
                                                "ssl_protocols TLSv1.3; ssl_session_tickets on;"),
    }
    if shutil.which("haproxy"):
        servers["haproxy"] = start_haproxy(work, upstream.port, bind_extra=f" ssl crt {tls['both']} ssl-min-ver TLSv1.3")
    try:
        runs = rounds(servers, args, load=lambda s, d, name, c: wrk(s, c, d, ["Connection: close"], scheme="https"))
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs}


def scenario_plain(work, args):
    """(a) No authentication: plain reverse proxying (a JWT-sized bearer token sent, unchecked)."""
    upstream = start_upstream(work)
    token = bearer_token()
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PLAIN_ROUTE),
        "nginx": start_nginx_proxy(work, upstream.port),
        "nginx-tuned": start_nginx_tuned(work, upstream.port),
        "nginx-fwd": start_nginx_proxy(work, upstream.port, location_extra=NGINX_GATEWAY_HEADERS, name="nginx-fwd"),
    }
    if shutil.which("haproxy"):
        servers["haproxy"] = start_haproxy(work, upstream.port)
    try:
        time.sleep(0.5)
        idle = servers["portcullis"].rss_kib()
        runs = rounds(servers, args, headers=[f"Authorization: Bearer {token}"])
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs, "portcullis_idle_rss_kib": idle, "token_bytes": len(token)}


JWT_ISSUER = "https://idp.bench.example"
JWT_AUDIENCE = "bench-api"
JWT_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [jwt]
"""
# Per worker, the verified-token cache holds 16,384 tokens (crates/authn/src/cache.rs,
# CAPACITY) and evicts the oldest first; cycling in order through more tokens than that
# means no token is ever found in it.
DISTINCT_TOKENS = 20_000


class Idp:
    """An RS256 (2048-bit) signing key, its JWKS file and the issuer config that trusts it."""

    def __init__(self, work):
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="bench-rs256", alg="RS256", use="sig")
        from cryptography.hazmat.primitives import serialization
        self.public_pem = os.path.join(work, "idp-public.pem")
        with open(self.public_pem, "wb") as f:
            f.write(self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
        self.jwks_file = os.path.join(work, "jwks.json")
        with open(self.jwks_file, "w") as f:
            json.dump({"keys": [jwk]}, f)
        self.config = f"""issuers:
  - id: bench
    issuer: {JWT_ISSUER}
    jwks_file: {self.jwks_file}
    audiences: [{JWT_AUDIENCE}]
    algorithms: [RS256]
"""

    def token(self, n, lifetime=3600):
        """A typical access token (RFC 9068 shape), made distinct by its `jti`."""
        import jwt
        now = int(time.time())
        claims = {"iss": JWT_ISSUER, "sub": f"user-{n}", "aud": JWT_AUDIENCE, "client_id": "web-app",
                  "scope": "orders:read orders:write profile", "iat": now, "exp": now + lifetime,
                  "jti": f"bench-{n}"}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench-rs256", "typ": "at+jwt"})


def check_auth(server, token, idp=None):
    """The route refuses a request without a token (and, given the IdP, with an expired one,
    one of another audience, and a forged signature) and accepts one with it."""
    url = f"http://127.0.0.1:{server.port}/"
    bad = [None]
    if idp:
        import jwt
        now = int(time.time())
        claims = {"iss": JWT_ISSUER, "sub": "x", "aud": JWT_AUDIENCE, "iat": now - 7200, "exp": now - 3600}
        bad.append(jwt.encode(claims, idp.key, algorithm="RS256", headers={"kid": "bench-rs256"}))
        bad.append(jwt.encode({**claims, "exp": now + 600, "aud": "other"}, idp.key, algorithm="RS256",
                              headers={"kid": "bench-rs256"}))
        head, payload, sig = token.split(".")
        bad.append(f"{head}.{payload}.{sig[:-4]}AAAA")
    for t in bad:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {t}"} if t else {})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise RuntimeError(f"{server.name} accepted a request with a bad or no token")
        except urllib.error.HTTPError as e:
            if e.code not in (401, 403):
                raise RuntimeError(f"{server.name} without a good token: status {e.code}, expected 401") from None
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        if r.status != 200:
            raise RuntimeError(f"with a token: status {r.status}, expected 200")


def jwt_servers(work, idp):
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, JWT_ROUTE, extra=idp.config),
        "nginx": start_nginx_proxy(work, upstream.port),
        "nginx-tuned": start_nginx_tuned(work, upstream.port),
    }
    if shutil.which("haproxy"):
        servers["haproxy-jwt"] = start_haproxy(work, upstream.port, idp)
    return upstream, servers


def run_repeated_token(servers, upstream, token, args, idp, redis=None):
    """Checks every authenticating server refuses bad tokens and takes `token`, then runs the
    rounds with `token` on every request (counting `redis`'s commands, given one); stops the
    servers."""
    headers = [f"Authorization: Bearer {token}"]
    try:
        for name, server in servers.items():
            if name not in NGINX_BASELINES:
                check_auth(server, token, idp)
        runs = rounds(servers, args, headers=headers, load=redis.counting(headers) if redis else None)
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs, "token_bytes": len(token)}


def scenario_jwt_repeated(work, args):
    """(b) JWT, one RS256 token repeated (served from the verified-token cache)."""
    idp = Idp(work)
    token = idp.token(0)
    upstream, servers = jwt_servers(work, idp)
    return run_repeated_token(servers, upstream, token, args, idp)


LIMIT_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [jwt]
    rate_limits: [{key: consumer, limit: 1000000, per: 1s}]
"""


class RedisServer:
    """A `redis-server` on a free loopback port, without persistence, beside the load generator (CPU 1): in production Redis has cores of its own, not the gateway's."""

    def __init__(self, work):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()

    def counting(self, headers=(), scripts=None):
        """A `load` for `rounds`: wrk, and for the servers on this Redis (`portcullis-redis*`)
        the Redis commands a request cost in that run (`redis_cmds_per_req`): what the
        gateway sent, not what scripts ran inside Redis."""
        def load(server, duration, name, connections):
            before = sent_commands(server) if name.startswith("portcullis-redis") else None
            r = wrk(server, connections, duration, headers, (scripts or {}).get(name))
            if before is not None:
                r["redis_cmds_per_req"] = (sent_commands(server) - before) / max(r["requests"], 1)
            return r
        return load


def sent_commands(server):
    """The Redis commands a gateway has sent (a batch is one), from its metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^portcullis_state_command_duration_seconds_count (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def scenario_jwt_limit(work, args):
    """(b) with a per-consumer rate limit (never reached): on memory (`portcullis`), on a
    local Redis (`portcullis-redis`, when redis-server is installed; `portcullis-redis-approx`
    with `mode: approximate`), beside the same route without a limit (`portcullis-jwt`)."""
    idp = Idp(work)
    token = idp.token(0)
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, LIMIT_ROUTE, extra=idp.config),
        "portcullis-jwt": start_portcullis(work, upstream.port, JWT_ROUTE, extra=idp.config),
        "nginx": start_nginx_proxy(work, upstream.port),
    }
    redis = None
    if shutil.which("redis-server"):
        redis = RedisServer(work)
        state = f"state:\n  backend: redis\n  redis_url: {redis.url()}\n"
        servers["portcullis-redis"] = start_portcullis(work, upstream.port, LIMIT_ROUTE, extra=idp.config + state)
        approx = LIMIT_ROUTE.replace("per: 1s}", "per: 1s, mode: approximate}")
        servers["portcullis-redis-approx"] = start_portcullis(work, upstream.port, approx, extra=idp.config + state)
    try:
        return run_repeated_token(servers, upstream, token, args, idp, redis)
    finally:
        if redis:
            redis.stop()


def cycling_script(work, name, lines_file, headers_lua):
    """A wrk script that walks a file's lines in order, one per request, wrapping round;
    `headers_lua` is the Lua table of request headers, with the current line as `line`.

    Each wrk run carries on where the previous run against the same server stopped (the
    position is kept in a file): restarting at the first line would resend the tokens of the
    previous run's last lap (still in the cache), or proofs already used."""
    script = os.path.join(work, f"cycle-{name}-{os.path.basename(lines_file)}.lua")
    position = script + ".position"
    with open(script, "w") as f:
        f.write(f"""
local threads = {{}}
function setup(thread) table.insert(threads, thread) end

lines = {{}}
for l in io.lines("{lines_file}") do lines[#lines + 1] = l end
i = 0
local f = io.open("{position}")
if f then i = tonumber(f:read("*l")) or 0; f:close() end

request = function()
  i = i % #lines + 1
  local line = lines[i]
  return wrk.format("GET", "/", {headers_lua})
end

function done(summary, latency, requests)
  local f = io.open("{position}", "w")
  f:write(tostring(threads[1]:get("i")))
  f:close()
end
""")
    return script


def distinct_tokens_script(work, name, token_file):
    """Distinct tokens in order: with more than the cache's FIFO holds, every token has been
    evicted by the time it comes round."""
    return cycling_script(work, name, token_file, '{["Authorization"] = "Bearer " .. line}')


def scenario_jwt_distinct(work, args):
    """(c) JWT, distinct RS256 tokens (more than the cache holds: every request verifies a signature)."""
    idp = Idp(work)
    started = time.time()
    tokens = [idp.token(n) for n in range(DISTINCT_TOKENS)]
    print(f"(minted {len(tokens)} RS256 tokens in {time.time() - started:.1f}s)", file=sys.stderr)
    token_file = os.path.join(work, "tokens.txt")
    with open(token_file, "w") as f:
        f.write("\n".join(tokens) + "\n")
    upstream, servers = jwt_servers(work, idp)
    scripts = {name: distinct_tokens_script(work, name, token_file) for name in servers}
    try:
        for name, server in servers.items():
            if name not in NGINX_BASELINES:
                check_auth(server, tokens[-1], idp)
        runs = rounds(servers, args, scripts=scripts)
        rss = servers["portcullis"].rss_kib()  # with a full verified-token cache
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs, "token_bytes": len(tokens[0]), "distinct_tokens": len(tokens), "portcullis_rss_kib": rss}


CEDAR_POLICIES = 100


def scenario_jwt_cedar(work, args):
    """(d) JWT (one token repeated) and 100 Cedar policies, one of them for this route."""
    idp = Idp(work)
    token = idp.token(0)
    policies = os.path.join(work, "policies.cedar")
    with open(policies, "w") as f:
        f.write('@id("bench") permit(principal, action == Action::"GET", resource == Route::"bench") '
                'when { principal is User && principal.scopes.contains("orders:read") && context.tls == false };\n')
        for i in range(1, CEDAR_POLICIES):
            f.write(f'@id("p{i}") permit(principal, action == Action::"GET", resource == Route::"route-{i}") '
                    f'when {{ principal.hasTag("team") && principal.getTag("team") == "team-{i}" }};\n')
    upstream = start_upstream(work)
    extra = idp.config + f"authorization:\n  cedar:\n    policies: [{policies}]\n"
    servers = {
        "portcullis": start_portcullis(work, upstream.port, JWT_ROUTE, extra=extra),
        "nginx": start_nginx_proxy(work, upstream.port),
        "nginx-tuned": start_nginx_tuned(work, upstream.port),
    }
    return run_repeated_token(servers, upstream, token, args, idp)


PROPAGATE_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [jwt]
    authorize: { scopes: ["orders:read"] }
    propagate:
      internal_token: { audience: orders-api, claims: { client: client_id } }
      headers: { X-User: subject }
"""


def scenario_jwt_propagate(work, args):
    """JWT (one token repeated) with identity propagation: an ES256 internal token (cached per
    caller) and an identity header, beside the same JWT route without propagation."""
    idp = Idp(work)
    token = idp.token(0)
    upstream = start_upstream(work)
    service = "token_service:\n  issuer: https://gateway.bench.internal\n"
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PROPAGATE_ROUTE, extra=idp.config + service),
        "portcullis-jwt": start_portcullis(work, upstream.port, JWT_ROUTE, extra=idp.config),
        "nginx": start_nginx_proxy(work, upstream.port),
    }
    return run_repeated_token(servers, upstream, token, args, idp)


DPOP_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [dpop]
"""


def dpop_script(work, name, proof_file, token, host=None):
    """The proofs in order, one per request, each with the bound token (and, given `host`,
    that `Host`: the authority the proofs' `htu` names, for a server on another port)."""
    extra = f', ["Host"] = "{host}"' if host else ""
    return cycling_script(work, name, proof_file, f'{{["Authorization"] = "DPoP {token}", ["DPoP"] = line{extra}}}')


def scenario_dpop(work, args):
    """(e) DPoP: a bound RS256 token (cached) and a fresh ES256 proof on every request; with
    redis-server installed, also with the replay cache on a local Redis (`portcullis-redis`,
    sent the same proofs, each once), and with a per-consumer rate limit on it too
    (`portcullis-redis-limit`)."""
    idp = Idp(work)
    upstream = start_upstream(work)
    # Proofs are made in advance, so the replay window is an hour for the run.
    dpop = idp.config + "dpop:\n  max_age: 1h\n"
    servers = {
        "portcullis": start_portcullis(work, upstream.port, DPOP_ROUTE, extra=dpop),
        "nginx": start_nginx_proxy(work, upstream.port),
    }
    redis = None
    if shutil.which("redis-server"):
        redis = RedisServer(work)
        state = f"state:\n  backend: redis\n  redis_url: {redis.url()}\n"
        servers["portcullis-redis"] = start_portcullis(work, upstream.port, DPOP_ROUTE, extra=dpop + state)
        limited = DPOP_ROUTE + "    rate_limits: [{key: consumer, limit: 1000000, per: 1s}]\n"
        # Its own key prefix: it is sent the proofs `portcullis-redis` was.
        prefixed = state + "  redis:\n    key_prefix: 'limited:'\n"
        servers["portcullis-redis-limit"] = start_portcullis(work, upstream.port, limited, extra=dpop + prefixed)
    # Proofs name the URL: one set for the gateway's port (nginx ignores them, and is sent
    # its own copy so that both walk their lists at their own pace).
    htu = f"http://127.0.0.1:{servers['portcullis'].port}/"
    # Enough single-use proofs for every request of every round, at every connection count,
    # at up to ~12k req/s.
    count = int(12_000 * (args.duration * (args.rounds + 1)) * len(args.connections))
    started = time.time()
    token, proofs = dpop_material(idp, htu, count)
    print(f"(minted {len(proofs)} DPoP proofs in {time.time() - started:.1f}s)", file=sys.stderr)
    proof_file = os.path.join(work, "proofs.txt")
    with open(proof_file, "w") as f:
        f.write("\n".join(proofs[1:]) + "\n")
    authority = f"127.0.0.1:{servers['portcullis'].port}"
    scripts = {name: dpop_script(work, name, proof_file, token, authority if name.startswith("portcullis-") else None)
               for name in servers}
    try:
        check = urllib.request.Request(htu, headers={"Authorization": f"DPoP {token}", "DPoP": proofs[0]})
        with urllib.request.urlopen(check, timeout=5) as r:
            if r.status != 200:
                raise RuntimeError(f"a DPoP request: status {r.status}")
        runs = rounds(servers, args, scripts=scripts, load=redis.counting(scripts=scripts) if redis else None)
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
        if redis:
            redis.stop()
    return {"runs": runs, "token_bytes": len(token)}


def dpop_material(idp, htu, count):
    """A DPoP key, a token of `idp` bound to it, and `count` single-use ES256 proofs for GET
    `htu` with that token: (token, proofs)."""
    import base64
    import hashlib
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, sort_keys=True, separators=(",", ":"))
    jkt = b64(hashlib.sha256(canonical.encode()).digest())
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "sub": "dpop-client", "aud": JWT_AUDIENCE, "client_id": "web-app",
              "scope": "orders:read", "iat": now, "exp": now + 7200, "jti": "bench-dpop", "cnf": {"jkt": jkt}}
    token = jwt.encode(claims, idp.key, algorithm="RS256", headers={"kid": "bench-rs256", "typ": "at+jwt"})
    ath = b64(hashlib.sha256(token.encode()).digest())
    proofs = [jwt.encode({"htm": "GET", "htu": htu, "iat": now, "jti": f"proof-{n}", "ath": ath}, key,
                         algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk}) for n in range(count)]
    return token, proofs


def hold_connections(port, count, path="/"):
    """Opens `count` keep-alive connections to `port` one after another, each serving one
    request before the next opens; returns the sockets (all still open) and how many
    answered 200."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1000)), hard))
    socks, ok = [], 0
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        ok += data.startswith(b"HTTP/1.1 200")
        socks.append(s)
    return socks, ok


def scenario_memory(work, args):
    """Memory: RSS idle, and holding 10,000 concurrent keep-alive connections (each has
    served one request), for Portcullis and nginx."""
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PLAIN_ROUTE),
        "nginx": start_nginx_proxy(work, upstream.port),
    }
    result = {"runs": {}, "memory": {}}
    try:
        time.sleep(0.5)
        for name, server in servers.items():
            idle = server.rss_kib()
            socks, ok = hold_connections(server.port, MEMORY_CONNECTIONS)
            time.sleep(0.5)
            held = server.rss_kib()
            for s in socks:
                s.close()
            result["memory"][name] = {"idle_kib": idle, "connections": MEMORY_CONNECTIONS, "answered": ok,
                                      "held_kib": held}
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return result


MEMORY_CONNECTIONS = 10_000

LATENCY_RATE = 8000


def oha_fixed_rate(server, connections, duration, rate, headers=()):
    """oha sending `rate` requests a second over `connections` connections, latencies
    corrected for coordinated omission (a late request counts from when it was due)."""
    cmd = ["taskset", "-c", LOAD_CPU, "oha", "--no-tui", "--output-format", "json", "-c", str(connections),
           "-q", str(rate), "--latency-correction", "-z", f"{duration}s"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{server.port}/")
    before = server.cpu_ticks()
    with CpuBusy() as cpu:
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    ticks = server.cpu_ticks() - before
    codes = out.get("statusCodeDistribution", {})
    done = sum(codes.values())
    return {
        "rps": out["summary"]["requestsPerSec"],
        "p50_ms": out["latencyPercentiles"]["p50"] * 1e3,
        "p99_ms": out["latencyPercentiles"]["p99"] * 1e3,
        "cpu_us_per_req": ticks / CLK_TCK * 1e6 / max(done, 1),
        "server_cpu_busy": cpu.server,
        "load_cpu_busy": cpu.load,
        "other_cpu": cpu.other,
        # Requests still in flight when the run's time is up are aborted, not failed.
        "errors": done - codes.get("200", 0) + sum(n for e, n in out.get("errorDistribution", {}).items()
                                                   if "deadline" not in e),
    }


def scenario_latency(work, args):
    """(b) at the same load for every server: one RS256 token repeated, sent at a fixed
    rate (LATENCY_RATE requests a second, below every server's capacity) by oha, with
    latencies corrected for coordinated omission. What the p99 bar compares: wrk's closed
    loop gives each server its own load. Needs oha (`cargo install oha`); skipped without."""
    if not shutil.which("oha"):
        print("\n## latency: skipped (oha not found; `cargo install oha`)")
        return None
    idp = Idp(work)
    token = idp.token(0)
    upstream, servers = jwt_servers(work, idp)
    headers = [f"Authorization: Bearer {token}"]
    try:
        for name, server in servers.items():
            if name not in NGINX_BASELINES:
                check_auth(server, token, idp)
        runs = rounds(servers, args, load=lambda s, d, name, c: oha_fixed_rate(s, c, d, LATENCY_RATE, headers))
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs}


SCENARIOS = {"plain": scenario_plain, "jwt-repeated": scenario_jwt_repeated, "jwt-distinct": scenario_jwt_distinct,
             "jwt-cedar": scenario_jwt_cedar, "dpop": scenario_dpop, "jwt-propagate": scenario_jwt_propagate,
             "memory": scenario_memory, "h2": scenario_h2, "tls-new-conn": scenario_tls_new_conn,
             "latency": scenario_latency, "jwt-limit": scenario_jwt_limit}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def wait_quiet(limit):
    """Waits, up to `limit` seconds, for a second in which other work (processes the bench did
    not start, the host) took at most twice OTHER_WORK of a CPU (a second is 100 clock ticks,
    and the system's own daemons take a few); returns whether it came."""
    if limit <= 0:
        return True
    deadline = time.time() + limit
    while True:
        with CpuBusy() as cpu:
            time.sleep(1)
        if cpu.other <= 2 * OTHER_WORK:
            return True
        if time.time() >= deadline:
            return False


# A run during which other work (processes the bench did not start, the host) took more of a
# CPU than this is marked as disturbed.
OTHER_WORK = 0.05


def ratios(ours, theirs):
    """Medians of the per-round ratios Portcullis / peer."""
    return {
        "throughput": med(a["rps"] / b["rps"] for a, b in zip(ours, theirs)),
        "p99": med(a["p99_ms"] / b["p99_ms"] for a, b in zip(ours, theirs) if a["p99_ms"] and b["p99_ms"]),
        "cpu_per_request": med(a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(ours, theirs)),
    }


def report_count(runs):
    """One connection count's table and ratios; returns its summary."""
    print(f"{'proxy':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'server CPU':>11} {'load CPU':>9} "
          f"{'other':>6}   req/s per round")
    summary = {}
    for proxy, rs in runs.items():
        m = {k: med(r.get(k) for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req",
                                                   "server_cpu_busy", "load_cpu_busy", "other_cpu")}
        summary[proxy] = m
        print(f"{proxy:<15} {m['rps']:>9.0f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['cpu_us_per_req']:>11.2f} "
              f"{m['server_cpu_busy'] * 100:>10.0f}% {m['load_cpu_busy'] * 100:>8.0f}% {m['other_cpu'] * 100:>5.0f}%   "
              + " ".join(f"{r['rps']:.0f}" + ("*" if r.get("other_cpu", 0) > OTHER_WORK else "") for r in rs))
        if any("redis_cmds_per_req" in r for r in rs):
            m["redis_cmds_per_req"] = med(r.get("redis_cmds_per_req") for r in rs)
            print(f"   {proxy}: Redis commands a request {m['redis_cmds_per_req']:.3f} (median of runs)")
        if any(r["errors"] for r in rs):
            print(f"   !! {proxy}: errors or non-2xx responses in some runs")
    disturbed = sum(any(rs[i].get("other_cpu", 0) > OTHER_WORK for rs in runs.values())
                    for i in range(min(map(len, runs.values()), default=0)))
    if disturbed:
        print(f"   !! other work took over {OTHER_WORK:.0%} of a CPU in some runs (marked *): "
              f"{disturbed} of {min(map(len, runs.values()))} rounds disturbed")
    summary["disturbed_rounds"] = disturbed
    ours = runs.get("portcullis")
    for peer, rs in runs.items():
        if peer == "portcullis" or not ours:
            continue
        r = summary[f"ratio_vs_{peer}"] = ratios(ours, rs)
        print(f"portcullis / {peer} (median of per-round ratios): throughput {r['throughput']:.2f}x, "
              f"p99 latency {r['p99']:.2f}x, CPU per request {r['cpu_per_request']:.2f}x")
    return summary


def report(name, data):
    """Prints a scenario's figures: for each connection count its table and ratios, then,
    against each peer, the ratios at every count and the worst of them (the lowest throughput
    ratio, the highest p99 ratio). Returns the summary: {connections: {...}, "worst": {...}}."""
    by_count = data["runs"]
    print(f"\n## {name}: {SCENARIOS[name].__doc__.strip()}")
    if "memory" in data:
        for proxy, m in data["memory"].items():
            print(f"{proxy:<15} idle RSS {m['idle_kib'] / 1024:6.1f} MiB, with {m['connections']} keep-alive "
                  f"connections ({m['answered']} answered 200) {m['held_kib'] / 1024:6.1f} MiB")
        return data["memory"]
    summary = {}
    for count, runs in by_count.items():
        print(f"\n### {count} connections")
        summary[count] = report_count(runs)
    peers = [p for p in next(iter(by_count.values()), {}) if p != "portcullis"]
    if peers and "portcullis" in next(iter(by_count.values())):
        print(f"\n### {name}: Portcullis / peer at each connection count (throughput; p99)")
        print(f"{'peer':<15} " + " ".join(f"{str(c) + ' conns':>15}" for c in by_count) + "   lowest throughput; highest p99")
        summary["worst"] = {}
        for peer in peers:
            rs = [(c, summary[c][f"ratio_vs_{peer}"]) for c in by_count]
            cells = " ".join(f"{'%.2f; %.2f' % (r['throughput'], r['p99']):>15}" for _, r in rs)
            low = min(rs, key=lambda cr: cr[1]["throughput"])
            p99s = [cr for cr in rs if cr[1]["p99"] == cr[1]["p99"]]  # not NaN (h2load has no p99)
            high = max(p99s, key=lambda cr: cr[1]["p99"]) if p99s else (None, {"p99": float("nan")})
            summary["worst"][peer] = {"throughput": low[1]["throughput"], "throughput_at": low[0],
                                      "p99": high[1]["p99"], "p99_at": high[0]}
            print(f"{peer:<15} {cells}   {low[1]['throughput']:.2f}x (at {low[0]}); {high[1]['p99']:.2f}x (at {high[0]})")
    if "portcullis_idle_rss_kib" in data:
        print(f"portcullis idle RSS: {data['portcullis_idle_rss_kib'] / 1024:.1f} MiB")
    if "portcullis_rss_kib" in data:
        print(f"portcullis RSS after the run (verified-token cache full): {data['portcullis_rss_kib'] / 1024:.1f} MiB")
    if "token_bytes" in data:
        print(f"token: {data['token_bytes']} bytes" + (f", {data['distinct_tokens']} distinct, cycled in order"
                                                       if "distinct_tokens" in data else ", the same on every request"))
    return summary


def connection_counts(text):
    """`--connections`: one count or a comma-separated list of them."""
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of connection counts: {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"not a list of connection counts: {text!r}")
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=connection_counts, default=[64],
                    help="wrk's connections, or a list of counts (8,32,64,256): every scenario runs at each")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json")
    ap.add_argument("--upstream-cpu", default=SERVER_CPU,
                    help=f"the CPU the upstream is pinned to (default {SERVER_CPU}, the servers'; "
                         f"{LOAD_CPU} puts it beside the load generator)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to this long for a second in which other work (processes "
                         "the bench did not start, the host) took at most 10%% of a CPU")
    ap.add_argument("--binary", help="the portcullis binary (default: $PORTCULLIS_BIN or target/release/portcullis)")
    args = ap.parse_args()
    global BINARY, UPSTREAM_CPU
    UPSTREAM_CPU = args.upstream_cpu
    if args.binary:
        BINARY = os.path.abspath(args.binary)
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    unknown = [n for n in args.scenarios.split(",") if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} CPUs | servers on CPU {SERVER_CPU}, wrk on CPU "
          f"{LOAD_CPU}, upstream on CPU {UPSTREAM_CPU} | {','.join(map(str, args.connections))} connections | {args.rounds} rounds x {args.duration}s per proxy")
    print(f"# portcullis: {BINARY}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as work:
        for name in args.scenarios.split(","):
            data = SCENARIOS[name](work, args)
            if data is None:
                continue
            results[name] = {"runs": data["runs"], "summary": report(name, data),
                             **{k: v for k, v in data.items() if k != "runs"}}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
