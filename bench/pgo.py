#!/usr/bin/env python3
"""A profile-guided build of the gateway: the release binary, laid out for the load it serves.

    python3 bench/pgo.py [--out target/pgo/portcullis] [--duration 2] [--scenarios plain,...]

Three steps; the two builds have their own target directories under `target/pgo/`, so that
neither disturbs `target/release`:

1. build an instrumented binary (`-Cprofile-generate`);
2. train it: `bench/run.py` drives it for one round of each training scenario (by default
   every HTTP scenario of the bench: plain proxying, JWT repeated and distinct, JWT with 100
   Cedar policies, DPoP, identity propagation, HTTP/2, a new TLS connection per request); each
   gateway process writes its counters when it exits;
3. merge the counters (`llvm-profdata`, from `rustup component add llvm-tools`, whose LLVM is
   rustc's own) and build again with `-Cprofile-use`.

The compiler then knows which branches and functions are hot: it inlines along the request
path, lays hot code out together and moves what the load never ran out of the way. On plain
proxying this cut the gateway's user CPU time a request by about a fifth (bench/RESULTS.md).
What the training load does not exercise (API keys, introspection, OpenAPI validation, ...)
is compiled as cold code: correct, but not tuned. For a deployment that leans on such a
feature, train on it too (`--scenarios`, or add a scenario to `run.py`).

Needs what `bench/run.py` needs (nginx, wrk, taskset; h2load and haproxy optional) and the
Python packages of `tests/helpers/requirements.txt` for the token scenarios. Without the
`RUSTFLAGS` of the environment: they would change what is built.
"""

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING = "plain,jwt-repeated,jwt-distinct,jwt-cedar,dpop,jwt-propagate,h2,tls-new-conn"


def rustc(*args):
    """rustc as cargo will run it in the workspace (a toolchain file there would choose it)."""
    return subprocess.run(["rustc", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def host_triple():
    for line in rustc("-vV").splitlines():
        if line.startswith("host: "):
            return line.split(": ", 1)[1].strip()
    sys.exit("rustc -vV printed no host triple")


def profdata_tool(host):
    """rustc's own llvm-profdata: a profile must be read by the LLVM that wrote it."""
    tool = os.path.join(rustc("--print", "sysroot").strip(), "lib", "rustlib", host, "bin", "llvm-profdata")
    if not os.path.exists(tool):
        sys.exit("llvm-profdata not found: run `rustup component add llvm-tools`")
    return tool


def environ_without(*names):
    """This process's environment without `names`."""
    return {k: v for k, v in os.environ.items() if k not in names}


def build(target_dir, host, rustflags):
    """`cargo build --release` of the binary alone. `--target` keeps the flags off build scripts
    and proc macros, which run on the build machine and need neither instrumentation nor a
    profile."""
    env = environ_without("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS")
    env.update(CARGO_TARGET_DIR=target_dir, RUSTFLAGS=rustflags)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "portcullis", "--target", host],
                   cwd=ROOT, env=env, check=True)
    return os.path.join(target_dir, host, "release", "portcullis")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "pgo", "portcullis"),
                    help="where the optimised binary goes (default: target/pgo/portcullis)")
    ap.add_argument("--duration", type=int, default=2, help="seconds of load per training scenario (default 2)")
    ap.add_argument("--scenarios", default=TRAINING, help=f"bench/run.py scenarios to train on (default {TRAINING})")
    args = ap.parse_args()

    scenarios = args.scenarios.split(",")
    if "h2" in scenarios and not shutil.which("h2load"):
        print("# h2load not found: training without the HTTP/2 scenario", flush=True)
        scenarios.remove("h2")
    scenarios = ",".join(scenarios)
    host = host_triple()
    profdata = profdata_tool(host)
    work = os.path.join(ROOT, "target", "pgo")
    profiles = os.path.join(work, "profiles")
    shutil.rmtree(profiles, ignore_errors=True)
    os.makedirs(profiles)

    print("# 1/3: the instrumented build", flush=True)
    instrumented = build(os.path.join(work, "instrumented"), host, f"-Cprofile-generate={profiles}")

    print("# 2/3: training", flush=True)
    log = os.path.join(work, "training.log")
    # The counters go where the instrumented build says, not where an LLVM_PROFILE_FILE left in
    # the environment would send them.
    env = environ_without("LLVM_PROFILE_FILE")
    with open(log, "w") as out:
        trained = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--binary", instrumented,
                                  "--rounds", "1", "--duration", str(args.duration), "--scenarios", scenarios],
                                 cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if trained.returncode != 0:
        sys.exit(f"the training run failed (rc {trained.returncode}); see {log}")
    raw = [os.path.join(profiles, f) for f in os.listdir(profiles) if f.endswith(".profraw")]
    if not raw:
        sys.exit(f"the training run left no profiles in {profiles}; see {log}")
    merged = os.path.join(work, "merged.profdata")
    subprocess.run([profdata, "merge", "-o", merged, *raw], check=True)

    print("# 3/3: the optimised build", flush=True)
    optimised = build(os.path.join(work, "optimised"), host, f"-Cprofile-use={merged}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    shutil.copy2(optimised, args.out)
    print(f"profile-guided binary: {args.out} (trained on {scenarios}; log {log})")


if __name__ == "__main__":
    main()
