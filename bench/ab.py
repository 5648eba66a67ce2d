#!/usr/bin/env python3
"""Two builds of Portcullis side by side: a change's effect, measured in one run.

    bench/ab.py BEFORE_BINARY AFTER_BINARY [--rounds 5] [--duration 5] [--scenarios plain,b,c,e]
    # e.g.: git stash; cargo build --release; cp target/release/portcullis /tmp/before
    #       git stash pop; cargo build --release
    #       bench/ab.py /tmp/before target/release/portcullis

Both builds run behind one nginx upstream, pinned as in `run.py` (servers and upstream on CPU
0, wrk on CPU 1; `--upstream-cpu 1` moves the upstream), and take turns: in every round each
runs once per scenario, in alternating order. Scenarios, as in `run.py`: `plain` (a), `b` one
RS256 token repeated, `c` 20,000 distinct RS256 tokens, `e` DPoP (a fresh ES256 proof on every
request; each build is restarted on the same port before each run, so both walk the same
proofs with an empty replay cache).

Per request it reports what the process spent (user and system CPU time, from
/proc/PID/task/*/stat), how often the gateway was preempted (involuntary context switches)
the CPU time the upstream spent serving it (on the servers' core, it pays for whatever of its
caches the gateway evicted), and how often the upstream went to sleep (its voluntary context
switches): a gateway whose writes find its peers asleep pays for waking them. It prints medians, and the median of the
per-round ratios after / before; any non-2xx response fails the run.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the servers, tokens and scripts of the main bench)


def counters(pid):
    """(user ticks, system ticks, voluntary switches, involuntary switches) of all threads."""
    user = system = voluntary = involuntary = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
        for line in open(f"/proc/{pid}/task/{tid}/status"):
            if line.startswith("voluntary_ctxt_switches"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary += int(line.split()[1])
    return user, system, voluntary, involuntary


def measure(server, upstream, duration, connections, headers=(), script=None):
    """One `run.wrk` run, with the gateway's and the upstream's counters around it."""
    before, up_before = counters(server.proc.pid), counters(upstream.proc.pid)
    figures = run.wrk(server, connections, duration, headers, script)
    after, up_after = counters(server.proc.pid), counters(upstream.proc.pid)
    if figures["errors"]:
        raise RuntimeError(f"errors or refusals in a run against {server.name}")
    n = figures["requests"]
    d = [a - b for a, b in zip(after, before)]
    up = [a - b for a, b in zip(up_after, up_before)]
    us = 1e6 / run.CLK_TCK / n
    return {"rps": figures["rps"], "user_us": d[0] * us, "sys_us": d[1] * us, "preempted": d[3] / n,
            "upstream_us": (up[0] + up[1]) * us, "upstream_sleeps": up[2] / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--scenarios", default="plain,b,c,e")
    ap.add_argument("--upstream-cpu", default=run.SERVER_CPU)
    args = ap.parse_args()
    run.UPSTREAM_CPU = args.upstream_cpu
    builds = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    scenarios = args.scenarios.split(",")
    results = {(s, b): [] for s in scenarios for b in builds}
    with tempfile.TemporaryDirectory(prefix="portcullis-ab-") as work:
        idp = run.Idp(work)
        upstream = run.start_upstream(work)
        servers, load = {}, {}
        try:
            if {"plain", "b", "c"} & set(scenarios):
                for name, binary in builds.items():
                    run.BINARY = binary
                    servers[("plain", name)] = run.start_portcullis(work, upstream.port, run.PLAIN_ROUTE)
                    servers[("jwt", name)] = run.start_portcullis(work, upstream.port, run.JWT_ROUTE,
                                                                  extra=idp.config)
            token = idp.token(0)
            load["plain"] = lambda name, i: measure(servers[("plain", name)], upstream, args.duration,
                                                    args.connections)
            load["b"] = lambda name, i: measure(servers[("jwt", name)], upstream, args.duration, args.connections,
                                                headers=[f"Authorization: Bearer {token}"])
            if "c" in scenarios:
                tokens = [idp.token(n) for n in range(run.DISTINCT_TOKENS)]
                token_file = os.path.join(work, "tokens.txt")
                with open(token_file, "w") as f:
                    f.write("\n".join(tokens) + "\n")
                scripts = {name: run.distinct_tokens_script(work, name, token_file) for name in builds}
                load["c"] = lambda name, i: measure(servers[("jwt", name)], upstream, args.duration,
                                                    args.connections, script=scripts[name])
            if "e" in scenarios:
                port = run.free_port()
                bound, proofs = run.dpop_material(idp, f"http://127.0.0.1:{port}/", 15_000 * args.duration)
                proof_file = os.path.join(work, "proofs.txt")
                with open(proof_file, "w") as f:
                    f.write("\n".join(proofs) + "\n")

                def dpop(name, i):
                    free_port, ports = run.free_port, iter([port])
                    run.free_port = lambda: next(ports, None) or free_port()
                    run.BINARY = builds[name]
                    try:
                        server = run.start_portcullis(work, upstream.port, run.DPOP_ROUTE,
                                                      extra=idp.config + "dpop:\n  max_age: 1h\n")
                    finally:
                        run.free_port = free_port
                    try:
                        script = run.dpop_script(work, f"{name}-{i}", proof_file, bound)
                        return measure(server, upstream, args.duration, args.connections, script=script)
                    finally:
                        server.stop()
                load["e"] = dpop
            for i in range(-1, args.rounds):  # round -1 warms up: pools filled, caches hot
                names = list(builds) if i % 2 == 0 else list(builds)[::-1]
                for scenario in scenarios:
                    for name in names:
                        figures = load[scenario](name, i)
                        if i >= 0:
                            results[(scenario, name)].append(figures)
        finally:
            for s in list(servers.values()) + [upstream]:
                s.stop()
    keys = ("rps", "user_us", "sys_us", "preempted", "upstream_us", "upstream_sleeps")
    print(f"{'':<16}" + "".join(f"{k:>16}" for k in keys))
    for scenario in scenarios:
        for name in builds:
            runs = results[(scenario, name)]
            print(f"{scenario + ' ' + name:<16}" + "".join(f"{statistics.median(r[k] for r in runs):>16.2f}"
                                                          for k in keys))
        ratios = [a["rps"] / b["rps"] for a, b in zip(results[(scenario, "after")], results[(scenario, "before")])]
        print(f"{scenario}: after / before, throughput {statistics.median(ratios):.3f}x (per round: "
              + " ".join(f"{r:.3f}" for r in ratios) + ")")


if __name__ == "__main__":
    main()
