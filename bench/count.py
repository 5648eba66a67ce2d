#!/usr/bin/env python3
"""Instructions a proxied request costs the gateway: a count that host noise does not move.

    bench/count.py [BINARY ...] [--route plain|jwt|jwt-distinct|jwt-limit|jwt-limit-redis] [--connections 16] [--duration 6] [--cache] [--keep DIR] [--config YAML]

Runs each binary (default: target/release/portcullis) under callgrind behind `run.py`'s nginx
upstream, drives it with `wrk` for a warm-up with collection off, switches collection on
(`callgrind_control -i on`) for `--duration` seconds of load, and prints the user-space
instructions counted divided by the requests served. Throughput on a shared machine moves by
tens of percent from one run to the next; this count moves by well under one percent, so a
change of a few percent in the work a request does shows here first. It does not see the
kernel's part of a request (about two thirds of its CPU time on loopback).

`--cache` also has callgrind simulate the first-level caches and prints their misses a
request. The data cache is this machine's. The instruction cache is 32 KiB like this
machine's, but fully associative: a request's code is larger than the cache, so each line of
it misses about once a request, and the count is the code a request touches, in 64-byte lines. The
machine's own 8-way cache would also count where the linker happened to place the code, which
moves the figure by several percent when any function moves; this one moves by well under one.

`--keep DIR` leaves each run's callgrind profile in DIR (`callgrind.N.ROUTE`, N the binary's
place on the command line), for `callgrind_annotate` to say which functions the count is in.

Routes: `plain` (a), `jwt` (b: one RS256 token repeated, served from the verified-token
cache) and `jwt-distinct` (c: a new RS256 token on every request, each signature checked).
Needs valgrind, nginx, wrk, and for the JWT routes the Python packages `run.py` mints with.
"""

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the servers, tokens and configs of the main bench)

DISTINCT_TOKENS = 12_000


def count(binary, work, upstream, route, connections, duration, cache=False, keep=None, config=""):
    """(requests, {event: count}) of one binary under callgrind."""
    run.BINARY = binary
    out = os.path.join(work, f"callgrind.{os.getpid()}.{time.monotonic_ns()}")
    headers, routes, extra, script = (), run.PLAIN_ROUTE, "", None
    redis = None
    if route in ("jwt", "jwt-limit", "jwt-limit-redis"):
        idp = run.Idp(work)
        headers = (f"Authorization: Bearer {idp.token(0)}",)
        routes, extra = run.JWT_ROUTE if route == "jwt" else run.LIMIT_ROUTE, idp.config
        if route == "jwt-limit-redis":
            redis = run.RedisServer(work)
            extra += f"state:\n  backend: redis\n  redis_url: {redis.url()}\n"

    elif route == "jwt-distinct":
        # Under callgrind the gateway serves a few hundred of these a second: more tokens than
        # it serves in the whole run means none is ever found in the verified-token cache.
        idp = run.Idp(work)
        token_file = os.path.join(work, f"tokens.{time.monotonic_ns()}.txt")
        with open(token_file, "w") as f:
            f.write("\n".join(idp.token(n) for n in range(DISTINCT_TOKENS)) + "\n")
        script = run.distinct_tokens_script(work, os.path.basename(binary), token_file)
        routes, extra = run.JWT_ROUTE, idp.config
    extra += config + ("\n" if config else "")
    # Fully associative instruction cache: see above.
    sim = ["--cache-sim=yes", "--I1=32768,512,64"] if cache else []
    server = run.start_portcullis(work, upstream.port, routes, extra,
                                  wrap=["valgrind", "--tool=callgrind", "--instr-atstart=no", *sim,
                                        f"--callgrind-out-file={out}"])
    try:
        warm = run.wrk(server, connections, 2, headers, script)
        subprocess.run(["callgrind_control", "-i", "on", str(server.proc.pid)], check=True, capture_output=True)
        figures = run.wrk(server, connections, duration, headers, script)
        subprocess.run(["callgrind_control", "-i", "off", str(server.proc.pid)], check=True, capture_output=True)
    finally:
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(60)
        if redis:
            redis.stop()
    if figures["errors"]:
        raise RuntimeError(f"errors or refusals in the run against {binary}")
    if script and warm["requests"] + figures["requests"] > DISTINCT_TOKENS:
        raise RuntimeError(f"the run went round the {DISTINCT_TOKENS} tokens ({warm['requests']} + "
                           f"{figures['requests']} requests): some were served from the cache")
    totals = {}
    files = sorted(glob.glob(out + "*"))
    if keep:
        os.makedirs(os.path.dirname(keep) or ".", exist_ok=True)
        for i, f in enumerate(files):
            shutil.copy(f, keep + (f".{i}" if i else ""))
    for f in files:
        events = []
        for line in open(f):
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                for event, n in zip(events, map(int, line.split()[1:])):
                    totals[event] = max(totals.get(event, 0), n)
    return figures["requests"], totals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="*", default=[run.BINARY])
    ap.add_argument("--route", choices=["plain", "jwt", "jwt-distinct", "jwt-limit", "jwt-limit-redis"],
                    default="plain")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--cache", action="store_true",
                    help="also simulate the first-level caches: the lines of code a request touches, and data misses")
    ap.add_argument("--keep", metavar="DIR", help="leave each run's callgrind profile in DIR")
    ap.add_argument("--config", default="", metavar="YAML",
                    help="top-level config to add, e.g. 'usage: {enabled: false}'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="portcullis-count-") as work:
        upstream = run.start_upstream(work)
        try:
            for i, binary in enumerate(args.binaries):
                keep = os.path.join(os.path.abspath(args.keep), f"callgrind.{i}.{args.route}") if args.keep else None
                n, ev = count(os.path.abspath(binary), work, upstream, args.route, args.connections,
                              args.duration, args.cache, keep, args.config)
                n = max(n, 1)
                line = f"{binary}: {ev.get('Ir', 0) // n:,} instructions a request"
                if args.cache:
                    d1 = ev.get("D1mr", 0) + ev.get("D1mw", 0)
                    line += f", code lines {ev.get('I1mr', 0) / n:,.1f} (L1i misses), L1d misses {d1 / n:,.1f}"
                print(f"{line} ({n} requests, route {args.route})")
        finally:
            upstream.stop()


if __name__ == "__main__":
    main()
