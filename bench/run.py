#!/usr/bin/env python3
"""Whole-proxy benchmark: Portcullis side by side with nginx (and other peers where a
scenario has them), on one machine, in one run.

Method (the machines are shared and noisy, so absolute numbers drift between runs):
  * every server under test and the upstream are pinned to CPU 0, the load generator (wrk)
    to CPU 1;
  * measurements are taken in rounds; in each round every proxy runs once, back to back, in
    alternating order; the ratio Portcullis/peer is computed within each round, and the
    median over rounds is reported, with the median absolute numbers;
  * CPU time per request (user + system, from /proc) of each proxy process is reported too:
    how much work each does per request, whatever else the machine is doing.

    bench/run.py                              # all scenarios
    bench/run.py --rounds 9 --duration 5 --scenarios plain
    bench/run.py --json bench/out/results.json

Needs: nginx, wrk (Debian packages), taskset, and `cargo build --release`.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "portcullis")
SERVER_CPU = "0"
LOAD_CPU = "1"
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
    """A process pinned to the server CPU."""

    def __init__(self, name, cmd, port, work):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, cwd=work, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, f"{name}-{port}.err"), "w"))
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
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def nginx_conf(work, port, body):
    conf = os.path.join(work, f"nginx-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.error.log warn;
events {{ worker_connections 20000; }}
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
    return Server("upstream", ["nginx", "-c", conf], port, work)


def start_nginx_proxy(work, upstream_port):
    port = free_port()
    conf = nginx_conf(work, port, f"""
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")
    return Server("nginx", ["nginx", "-c", conf], port, work)


def start_portcullis(work, upstream_port, routes_yaml, extra=""):
    port, admin = free_port(), free_port()
    conf = os.path.join(work, f"portcullis-{port}.yaml")
    with open(conf, "w") as f:
        f.write(f"""
server:
  listen: 127.0.0.1:{port}
  workers: 1
admin:
  listen: 127.0.0.1:{admin}
access_log:
  enabled: false
log:
  level: warn
{extra}
routes:
{routes_yaml.replace("{upstream}", f"http://127.0.0.1:{upstream_port}")}
""")
    return Server("portcullis", [BINARY, "serve", "--config", conf], port, work)


PLAIN_ROUTE = """  - id: bench
    upstream: {upstream}
    authenticate: [none]
"""

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$")


def wrk(server, connections, duration, headers=()):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{server.port}/")
    before = server.cpu_ticks()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ticks = server.cpu_ticks() - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {m.group(1): float(m.group(2)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(3)]
           for m in map(LATENCY.match, out.splitlines()) if m}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "cpu_us_per_req": ticks / CLK_TCK * 1e6 / max(requests, 1),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (1 if sock else 0),
    }


def rounds(servers, args, headers=()):
    """Runs every server once per round, alternating the order; returns runs per server."""
    for s in servers.values():  # warm-up: pools filled, caches hot
        wrk(s, args.connections, 2, headers)
    runs = {name: [] for name in servers}
    names = list(servers)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(wrk(servers[name], args.connections, args.duration, headers))
    return runs


def scenario_plain(work, args):
    """(a) No authentication: plain reverse proxying."""
    upstream = start_upstream(work)
    servers = {
        "portcullis": start_portcullis(work, upstream.port, PLAIN_ROUTE),
        "nginx": start_nginx_proxy(work, upstream.port),
    }
    try:
        time.sleep(0.5)
        idle = servers["portcullis"].rss_kib()
        runs = rounds(servers, args)
    finally:
        for s in list(servers.values()) + [upstream]:
            s.stop()
    return {"runs": runs, "portcullis_idle_rss_kib": idle}


SCENARIOS = {"plain": scenario_plain}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def report(name, data):
    runs = data["runs"]
    print(f"\n## {name}: {SCENARIOS[name].__doc__.strip()}")
    print(f"{'proxy':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}   req/s per round")
    summary = {}
    for proxy, rs in runs.items():
        m = {k: med(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
        summary[proxy] = m
        print(f"{proxy:<12} {m['rps']:>9.0f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['cpu_us_per_req']:>11.2f}   "
              + " ".join(f"{r['rps']:.0f}" for r in rs))
        if any(r["errors"] for r in rs):
            print(f"   !! {proxy}: errors or non-2xx responses in some runs")
    ours = runs.get("portcullis")
    for peer, rs in runs.items():
        if peer == "portcullis" or not ours:
            continue
        thr = med(a["rps"] / b["rps"] for a, b in zip(ours, rs))
        p99 = med(a["p99_ms"] / b["p99_ms"] for a, b in zip(ours, rs))
        cpu = med(a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(ours, rs))
        summary[f"ratio_vs_{peer}"] = {"throughput": thr, "p99": p99, "cpu_per_request": cpu}
        print(f"portcullis / {peer} (median of per-round ratios): throughput {thr:.2f}x, "
              f"p99 latency {p99:.2f}x, CPU per request {cpu:.2f}x")
    if "portcullis_idle_rss_kib" in data:
        print(f"portcullis idle RSS: {data['portcullis_idle_rss_kib'] / 1024:.1f} MiB")
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} CPUs | servers on CPU {SERVER_CPU}, wrk on CPU "
          f"{LOAD_CPU} | {args.connections} connections | {args.rounds} rounds x {args.duration}s per proxy")
    results = {}
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as work:
        for name in args.scenarios.split(","):
            data = SCENARIOS[name](work, args)
            results[name] = {"runs": data["runs"], "summary": report(name, data)}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
