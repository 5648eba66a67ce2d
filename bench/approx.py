#!/usr/bin/env python3
"""How far an approximate rate limit strays from the exact one, and what it costs.

    bench/approx.py [--replicas 2] [--limit 20000] [--duration 5] [--connections 32] [--sync-interval 100ms]

Starts a Redis and REPLICAS gateways (the release binary) sharing it, each with one route
limited to LIMIT requests a second (one bucket for every caller, burst LIMIT), and drives all
of them at once, well past the limit, with one `wrk` each for DURATION seconds. Then the same
with `mode: approximate`. Prints, for each mode, the requests admitted (2xx) against what an
exact limit admits in that time (LIMIT a second plus one burst), and the throughput of all
replicas together (admitted and refused). Needs redis-server, wrk and nginx (the upstream).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the servers and configs of the main bench)


def drive(servers, connections, duration):
    """(admitted, total) requests over all servers, one wrk each, at once."""
    procs = [subprocess.Popen(["taskset", "-c", run.LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
                               f"http://127.0.0.1:{s.port}/"], stdout=subprocess.PIPE, text=True)
             for s in servers]
    admitted = total = 0
    for p in procs:
        out = p.communicate()[0]
        n = int(re.search(r"(\d+) requests in", out).group(1))
        refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        total += n
        admitted += n - (int(refused.group(1)) if refused else 0)
    return admitted, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--sync-interval", default="100ms")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="portcullis-approx-") as work:
        upstream = run.start_upstream(work)
        redis = run.RedisServer(work)
        try:
            print(f"# {args.replicas} replicas, one bucket of {args.limit} a second (burst {args.limit}), "
                  f"{args.duration}s at {args.connections} connections each, sync every {args.sync_interval}")
            print("| mode | admitted | an exact limit admits | admitted / exact | requests a second (all replicas) |")
            print("| --- | --- | --- | --- | --- |")
            for mode in ("exact", "approximate"):
                redis_cli = ["redis-cli", "-p", str(redis.port), "FLUSHALL"]
                subprocess.run(redis_cli, check=True, capture_output=True)
                state = (f"state:\n  backend: redis\n  redis_url: {redis.url()}\n"
                         f"  redis: {{ timeout: 200ms, sync_interval: {args.sync_interval} }}\nusage: {{ enabled: false }}\n")
                route = (f"  - id: bench\n    upstream: {{upstream}}\n    authenticate: [none]\n"
                         f"    rate_limits: [{{key: route, limit: {args.limit}, per: 1s, mode: {mode}}}]\n")
                servers = [run.start_portcullis(work, upstream.port, route, extra=state) for _ in range(args.replicas)]
                try:
                    admitted, total = drive(servers, args.connections, args.duration)
                finally:
                    for s in servers:
                        s.proc.send_signal(signal.SIGINT)
                        s.proc.wait(30)
                exact = args.limit * args.duration + args.limit
                print(f"| {mode} | {admitted:,} | {exact:,} | {admitted / exact:.3f} | {total / args.duration:,.0f} |")
        finally:
            redis.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
