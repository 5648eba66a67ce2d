#!/usr/bin/env python3
"""Checks the Kubernetes manifests and the Helm chart of Portcullis.

    python3 tests/deploy/k8s_check.py [PATH/TO/portcullis] [--renderer auto|helm|builtin]

What it checks:

- every manifest under deploy/kubernetes, and every resource each kustomization lists, is
  valid Kubernetes (kubernetes-validate, strict: unknown fields are errors) for the oldest
  and the newest Kubernetes version in KUBERNETES_VERSIONS; kustomizations stay plain lists
  of resources (no patches, generators or transformers), so that what is validated is what
  `kubectl apply -k` applies; where kubectl is installed, `kubectl kustomize` must build each
  one into exactly those resources;
- the Helm chart deploy/helm/portcullis, rendered for its default values and for each
  ci/*-values.yaml, is valid the same way. It is rendered with `helm template` when helm is on
  PATH (and then also with the renderer below, which must agree), else with the renderer
  below, which implements the part of Helm's template language the chart uses;
- in every workload, the gateway container (the one named `portcullis`): runs as a fixed
  non-root user, with a read-only root file system, no privilege escalation, every
  capability dropped and the RuntimeDefault seccomp profile, within resource requests and
  limits; probes GET /healthz (liveness) and /readyz (readiness) on the admin port; has no
  preStop hook, and a termination grace period longer than 35s and than the config's
  server.shutdown_delay + server.drain_timeout; its readiness probe notices a shutdown within
  server.shutdown_delay; mounts its config folder from a ConfigMap (not through subPath, so
  that updates arrive) and keeps the usage journal (state.path) on a writable volume; its
  container ports match the config's listen addresses; every `{ env: VARIABLE }` of the
  config is set; the Services send traffic to the gateway's public port only; replicated
  edge gateways have a PodDisruptionBudget and are spread over nodes;
- with a gateway binary given, `portcullis check` accepts each embedded config, written
  with the other files of its ConfigMap into a temporary folder, with placeholder values for
  the environment variables it names.

Needs PyYAML and kubernetes-validate (tests/helpers/requirements.txt). Exit status: 0 when
every check passes, 1 when one fails (each failure names the file and the check), 2 when the
checks cannot run.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import (
        InvalidSchemaError,
        SchemaNotFoundError,
        ValidationError,
        VersionNotSupportedError,
    )
except ImportError as e:  # depends on the machine
    print(f"k8s_check: {e}: install tests/helpers/requirements.txt (PyYAML, kubernetes-validate)", file=sys.stderr)
    sys.exit(2)

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "portcullis"
RELEASE = "portcullis"
NAMESPACE = "default"

# The oldest Kubernetes the manifests support (the preStop `sleep` action of the sidecar's
# application is on by default from 1.30) and the newest kubernetes-validate knows.
MIN_KUBERNETES = "1.30"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.latest_version())

GATEWAY = "portcullis"  # the gateway container's name
DEFAULT_SHUTDOWN_DELAY = 5.0  # server.shutdown_delay
DEFAULT_DRAIN_TIMEOUT = 30.0  # server.drain_timeout
# A value for each `{ env: VARIABLE }` of a config under `portcullis check`: long enough for
# every secret (hmac_secret needs 32 bytes).
PLACEHOLDER_SECRET = "k8s-check-placeholder-secret-0123456789abcdef"


def give_up(message: str) -> None:
    """The checks cannot run: exit 2."""
    print(f"k8s_check: {message}", file=sys.stderr)
    sys.exit(2)


def rel(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


class Failures:
    """Collects failed checks; each names where and what."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, ok: bool, where: str, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.fail(where, what)
        return ok

    def fail(self, where: str, what: str) -> None:
        line = f"FAIL {where}: {what}"
        self.failed.append(line)
        print(line, flush=True)


class Doc:
    """One Kubernetes object and where it came from."""

    def __init__(self, obj: dict, source: str) -> None:
        self.obj = obj
        self.source = source

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name"))

    def where(self) -> str:
        return f"{self.source} {self.kind}/{self.name}"


def load_yaml_docs(text: str, source: str, failures: Failures) -> list[Doc]:
    try:
        objs = [o for o in yaml.safe_load_all(text) if o is not None]
    except yaml.YAMLError as e:
        failures.fail(source, f"not valid YAML: {e}")
        return []
    docs = []
    for o in objs:
        if failures.check(isinstance(o, dict) and "apiVersion" in o and "kind" in o, source,
                          "every YAML document must be a Kubernetes object (apiVersion, kind)"):
            docs.append(Doc(o, source))
    return docs


# --------------------------------------------------------------------------------------------
# Validation against the Kubernetes OpenAPI schemas


def validate_docs(docs: list[Doc], failures: Failures) -> None:
    for d in docs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(d.obj, version, strict=True)
                failures.passed += 1
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                failures.fail(d.where(), f"not valid for Kubernetes {version}: {path}: {e.message}")
            except SchemaNotFoundError as e:
                failures.fail(d.where(), f"not valid for Kubernetes {version}: {e.message}")
            except (InvalidSchemaError, VersionNotSupportedError) as e:
                give_up(f"kubernetes-validate cannot check Kubernetes {version}: {e.message}")


# --------------------------------------------------------------------------------------------
# Kustomizations: plain lists of resources

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def kustomize_resources(directory: Path, failures: Failures, stack: tuple[Path, ...] = ()) -> list[Doc]:
    """The resources a kustomization builds into, its bases' included."""
    kfile = kustomization_file(directory)
    where = rel(kfile or directory)
    if not failures.check(kfile is not None, rel(directory), "no kustomization.yaml"):
        return []
    if not failures.check(directory not in stack, where, "kustomizations include each other in a cycle"):
        return []
    try:
        k = yaml.safe_load(kfile.read_text()) or {}
    except yaml.YAMLError as e:
        failures.fail(where, f"not valid YAML: {e}")
        return []
    failures.check(k.get("kind") == "Kustomization" and str(k.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"),
                   where, "must be `apiVersion: kustomize.config.k8s.io/v1beta1`, `kind: Kustomization`")
    extra = sorted(set(k) - KUSTOMIZATION_KEYS)
    failures.check(not extra, where,
                   f"uses {', '.join(extra)}: keep kustomizations to plain `resources`, so that the "
                   "manifests validated here are the ones applied (no patches, generators or transformers)")
    docs: list[Doc] = []
    for entry in k.get("resources") or []:
        target = (directory / str(entry)).resolve()
        if target.is_dir():
            docs += kustomize_resources(target, failures, stack + (directory,))
        elif target.is_file():
            docs += load_yaml_docs(target.read_text(), rel(target), failures)
        else:
            failures.fail(where, f"resource `{entry}` is neither a file nor a folder here")
    return docs


def kustomize_cross_check(directory: Path, docs: list[Doc], failures: Failures) -> None:
    """Where kubectl is installed, `kubectl kustomize` must build exactly these resources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    where = rel(kustomization_file(directory) or directory)
    try:
        run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        failures.fail(where, "`kubectl kustomize` did not finish within 120s")
        return
    if not failures.check(run.returncode == 0, where, f"`kubectl kustomize` fails: {run.stderr.strip()}"):
        return
    built = sorted(json.dumps(o, sort_keys=True) for o in yaml.safe_load_all(run.stdout) if o is not None)
    listed = sorted(json.dumps(d.obj, sort_keys=True) for d in docs)
    failures.check(built == listed, where, "`kubectl kustomize` builds other resources than the ones listed")


# --------------------------------------------------------------------------------------------
# A renderer for the part of Helm's template language the chart uses: text/template actions
# ({{ }}, {{- -}} trimming, comments), fields of .Values, .Release, .Chart and variables,
# if/else if/else, range (lists and maps, with variables), define and include, parenthesised
# pipelines, and the functions default, quote, toYaml, indent, nindent, eq, ne, and, or, not
# and sha256sum, with Helm's ways: values are JSON (every number a float64), a missing value
# prints as nothing, and toYaml writes what sigs.k8s.io/yaml writes.


class TemplateError(Exception):
    pass


class Struct(dict):
    """A Go struct (.Release, .Chart): a missing field is an error, not an empty value."""


_MISSING = object()


def _is_ws(c: str) -> bool:
    return c in " \t\r\n"


def _lex(src: str, name: str) -> list[tuple]:
    """Text and actions: [("text", s) | ("action", body, line)], trimming done."""
    out: list[tuple] = []
    i = 0
    trim_next = False
    while True:
        j = src.find("{{", i)
        text = src[i:] if j < 0 else src[i:j]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if j < 0:
            if text:
                out.append(("text", text))
            return out
        line = src.count("\n", 0, j) + 1
        k = j + 2
        if src.startswith("-", k) and k + 1 < len(src) and _is_ws(src[k + 1]):
            text = text.rstrip(" \t\r\n")
            k += 2
        if text:
            out.append(("text", text))
        # A comment: {{/* ... */}}, with optional trim markers.
        if src.startswith("/*", k):
            end = src.find("*/", k + 2)
            if end < 0:
                raise TemplateError(f"{name}:{line}: unclosed comment")
            m = re.compile(r"\s*(-\s*)?}}").match(src, end + 2)
            if not m:
                raise TemplateError(f"{name}:{line}: comment must end the action")
            trim_next = m.group(1) is not None
            i = m.end()
            continue
        # Find the closing }} outside of quotes.
        p = k
        quote = None
        while p < len(src):
            c = src[p]
            if quote:
                if c == "\\" and quote != "`":
                    p += 2
                    continue
                if c == quote:
                    quote = None
            elif c in "\"`'":
                quote = c
            elif src.startswith("}}", p):
                break
            p += 1
        else:
            raise TemplateError(f"{name}:{line}: unclosed action")
        body = src[k:p]
        trim_next = False
        if len(body) >= 2 and body.endswith("-") and _is_ws(body[-2]):
            body = body[:-1]
            trim_next = True
        out.append(("action", body.strip(), line))
        i = p + 2


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F_]+|[0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
)""", re.X)


def _tokens(body: str, where: str) -> list[tuple[str, str]]:
    toks = []
    pos = 0
    body = body.rstrip()
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"{where}: cannot read `{body[pos:]}`")
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


def _go_string(tok: tuple[str, str]) -> str:
    kind, text = tok
    if kind == "raw":
        return text[1:-1]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


def _parse_pipeline(toks: list, where: str) -> dict:
    """{"decl": [...names], "cmds": [[operand...]...]} from an action's tokens."""
    decl: list[str] = []
    assign = False
    # `$x :=`, `$x =`, `$k, $v :=`
    for n in (1, 3):
        if len(toks) > n and toks[n][0] in ("declare", "assign"):
            names = toks[:n]
            if all(t[0] == "var" for t in names[::2]) and all(t[0] == "comma" for t in names[1::2]):
                decl = [t[1] for t in names[::2]]
                assign = toks[n][0] == "assign"
                toks = toks[n + 1:]
                break
    cmds: list[list] = [[]]
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if kind == "pipe":
            cmds.append([])
            i += 1
            continue
        if kind == "lparen":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(toks[j][0], 0)
                j += 1
            if depth:
                raise TemplateError(f"{where}: unclosed parenthesis")
            cmds[-1].append(("pipe", _parse_pipeline(toks[i + 1:j - 1], where)))
            i = j
            continue
        if kind in ("rparen", "comma", "declare", "assign"):
            raise TemplateError(f"{where}: unexpected `{text}`")
        if kind in ("str", "raw"):
            cmds[-1].append(("lit", _go_string((kind, text))))
        elif kind == "num":
            t = text.replace("_", "")
            if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|[0-9]+)", t):
                cmds[-1].append(("lit", int(t, 0) if not re.fullmatch(r"[-+]?0[0-9]+", t) else int(t, 8)))
            else:
                cmds[-1].append(("lit", float(t)))
        elif kind == "ident" and text in ("true", "false"):
            cmds[-1].append(("lit", text == "true"))
        elif kind == "ident" and text == "nil":
            cmds[-1].append(("lit", None))
        else:
            cmds[-1].append((kind, text))
        i += 1
    if any(not c for c in cmds):
        raise TemplateError(f"{where}: empty command in pipeline")
    return {"decl": decl, "assign": assign, "cmds": cmds}


def _parse(items: list[tuple], name: str, defines: dict) -> list:
    """A list of nodes; `define` blocks go to `defines`."""
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list, str, list]:
        nonlocal pos
        nodes: list = []
        while pos < len(items):
            item = items[pos]
            pos += 1
            if item[0] == "text":
                nodes.append(("text", item[1]))
                continue
            body, line = item[1], item[2]
            where = f"{name}:{line}"
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word):].strip()
            if word in ("end", "else"):
                if word not in stop:
                    raise TemplateError(f"{where}: unexpected `{word}`")
                return nodes, word, _tokens(rest, where) if rest else []
            if word == "if":
                nodes.append(if_node(_parse_pipeline(_tokens(rest, where), where), where))
            elif word == "range":
                pipe = _parse_pipeline(_tokens(rest, where), where)
                body_nodes, ended, _ = block(("end", "else"))
                else_nodes: list = []
                if ended == "else":
                    else_nodes, ended, _ = block(("end",))
                nodes.append(("range", pipe, body_nodes, else_nodes, where))
            elif word == "define":
                toks = _tokens(rest, where)
                if len(toks) != 1 or toks[0][0] not in ("str", "raw"):
                    raise TemplateError(f"{where}: define needs a quoted name")
                body_nodes, _, _ = block(("end",))
                defines[_go_string(toks[0])] = (body_nodes, name)
            elif word in ("with", "block", "template", "break", "continue"):
                raise TemplateError(f"{where}: `{word}` is not implemented here: "
                                    "keep the chart to the template subset tests/deploy/k8s_check.py renders")
            else:
                nodes.append(("action", _parse_pipeline(_tokens(body, where), where), where))
        if stop:
            raise TemplateError(f"{name}: missing `end`")
        return nodes, "", []

    def if_node(cond: dict, where: str) -> tuple:
        branches = []
        body_nodes, ended, toks = block(("end", "else"))
        branches.append((cond, body_nodes))
        else_nodes: list = []
        while ended == "else":
            if toks and toks[0] == ("ident", "if"):
                cond2 = _parse_pipeline(toks[1:], where)
                body_nodes, ended, toks = block(("end", "else"))
                branches.append((cond2, body_nodes))
            else:
                else_nodes, ended, toks = block(("end",))
        return ("if", branches, else_nodes, where)

    nodes, _, _ = block(())
    return nodes


def _truth(v) -> bool:
    if v is None or v is _MISSING:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def go_float(f: float) -> str:
    """fmt's %v of a float64 (strconv 'g', shortest): 1e+06, 123456, 0.5, 1e-05."""
    if f != f:
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    t = Decimal(repr(abs(f))).as_tuple()
    digits = "".join(map(str, t.digits))
    dp = len(digits) + t.exponent
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _fmt(v) -> str:
    """How text/template prints a value (Helm prints a missing one as nothing)."""
    if v is None or v is _MISSING:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_fmt(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def _go_quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif ch == " " or (ch.isprintable() and o != 0xA0):
            out.append(ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _empty(v) -> bool:
    """sprig's empty: what `default` replaces."""
    return not _truth(v)


# ---- toYaml: what sigs.k8s.io/yaml (JSON, then go-yaml v2) writes

_YAML_BEST_WIDTH = 80
_YAML_INDENT = 2
_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(?:(?:[Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]+)?(?:Z|[-+][0-9]{2}:[0-9]{2}))"
    r"|(?: [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]+)?))?$")
_YAML_SPECIAL = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], None),
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}


def _go_int(s: str, signed: bool) -> int | None:
    """strconv.ParseInt(s, 0, 64) (or ParseUint), None when it fails."""
    if not _GO_INT.match(s) or (not signed and s[0] in "+-"):
        return None
    body = s.lstrip("+-")
    if re.match(r"0[oO]", body):
        v = int(body[2:], 8)
    elif re.match(r"0[0-7]+$", body):
        v = int(body, 8)
    else:
        v = int(body, 0)
    if s.startswith("-"):
        v = -v
    ok = -(2 ** 63) <= v < 2 ** 63 if signed else 0 <= v < 2 ** 64
    return v if ok else None


def _go_resolve(s: str) -> tuple[str, object]:
    """How go-yaml v2 reads the plain scalar s: (kind, value)."""
    if s in _YAML_SPECIAL:
        v = _YAML_SPECIAL[s]
        return ("null" if v is None else "bool" if isinstance(v, bool) else "float"), v
    c = s[0]
    if c == "." and re.fullmatch(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?", s):
        return "float", float(s)
    if c in "+-0123456789":
        if _TIMESTAMP.match(s):
            return "timestamp", s
        plain = s.replace("_", "")
        for signed in (True, False):
            v = _go_int(plain, signed)
            if v is not None:
                return "int", v
        if _YAML_FLOAT.match(plain):
            return "float", float(plain)
    return "str", s


def _resolves_to_string(s: str) -> bool:
    """Whether go-yaml v2 reads the plain scalar s as a string (else it must be quoted)."""
    return _go_resolve(s)[0] == "str" and not _BASE60.match(s)


def _printable(c: str) -> bool:
    o = ord(c)
    return o == 0x0A or 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or (0xE000 <= o <= 0xFFFD and o != 0xFEFF)


def _is_break(c: str) -> bool:
    return c in "\r\n\x85\u2028\u2029"


def _is_blankz(s: str, i: int) -> bool:
    return i >= len(s) or s[i] in " \t" or _is_break(s[i])


def _analyze(s: str) -> dict:
    """libyaml's yaml_emitter_analyze_scalar, in block context."""
    if not s:
        return {"plain": False, "single": True, "block": False}
    # Only what stops a plain scalar in block context matters here (toYaml writes no flow).
    indicators = s.startswith("---") or s.startswith("...")
    preceded_ws = True
    line_breaks = special = False
    leading_space = leading_break = trailing_space = trailing_break = False
    break_space = space_break = previous_space = previous_break = False
    n = len(s)
    for i, c in enumerate(s):
        followed_ws = _is_blankz(s, i + 1)
        if i == 0:
            indicators |= c in "#,[]{}&*!|>'\"%@`" or (c in "?:-" and followed_ws)
        else:
            indicators |= (c == ":" and followed_ws) or (c == "#" and preceded_ws)
        if not _printable(c):
            special = True
        if _is_break(c):
            line_breaks = True
        if c == " ":
            leading_space |= i == 0
            trailing_space |= i == n - 1
            break_space |= previous_break
            previous_space, previous_break = True, False
        elif _is_break(c):
            leading_break |= i == 0
            trailing_break |= i == n - 1
            space_break |= previous_space
            previous_space, previous_break = False, True
        else:
            previous_space = previous_break = False
        preceded_ws = _is_blankz(s, i)
    plain = single = block = True
    if leading_space or leading_break or trailing_space or trailing_break:
        plain = False
    if trailing_space:
        block = False
    if break_space:
        plain = single = False
    if space_break or special:
        plain = single = block = False
    if line_breaks:
        plain = False
    if indicators:
        plain = False
    return {"plain": plain, "single": single, "block": block}


def _yaml_key_less(a: str, b: str) -> bool:
    """go-yaml v2's order of map keys (digit runs compare as numbers)."""
    ar, br = a, b
    for i in range(min(len(ar), len(br))):
        if ar[i] == br[i]:
            continue
        al, bl = ar[i].isalpha(), br[i].isalpha()
        if al and bl:
            return ar[i] < br[i]
        if al or bl:
            return bl
        an = bn = 0
        if ar[i] == "0" or br[i] == "0":
            j = i - 1
            while j >= 0 and ar[j].isdigit():
                if ar[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(ar) and ar[ai].isdigit():
            an = an * 10 + int(ar[ai])
            ai += 1
        bi = i
        while bi < len(br) and br[bi].isdigit():
            bn = bn * 10 + int(br[bi])
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return ar[i] < br[i]
    return len(ar) < len(br)


def _sorted_keys(keys) -> list[str]:
    # The order is Go's wherever _yaml_key_less is a consistent order, as it is for names made
    # of letters, digits, `_` and `-` that start with a letter. For sets where it is not (`01`,
    # `0a`, `1!` compare in a cycle), Go's result depends on its sort algorithm and may differ.
    return sorted(keys, key=functools.cmp_to_key(lambda a, b: -1 if _yaml_key_less(a, b) else (1 if _yaml_key_less(b, a) else 0)))


class _YamlWriter:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.col = 0

    def put(self, s: str) -> None:
        self.parts.append(s)
        nl = s.rfind("\n")
        self.col = len(s) - nl - 1 if nl >= 0 else self.col + len(s)

    def newline_indent(self, indent: int) -> None:
        """libyaml's write_indent: a new line, unless a block scalar has just ended one."""
        at_line_start = bool(self.parts) and self.parts[-1].endswith("\n")
        self.put(("" if at_line_start else "\n") + " " * max(indent, 0))

    # Scalars ------------------------------------------------------------------------------

    def scalar(self, v, indent: int, lead: str = " ") -> None:
        """Writes v after lead; indent: where continuation lines and block text go."""
        if v is None:
            self.put(lead + "null")
        elif isinstance(v, bool):
            self.put(lead + ("true" if v else "false"))
        elif isinstance(v, (int, float)):
            self.put(lead + _yaml_number(v))
        else:
            self.string(str(v), indent, key=False, lead=lead)

    def string(self, s: str, indent: int, key: bool, lead: str) -> None:
        if key and ("\n" in s or len(s) > 128):
            raise TemplateError(f"toYaml: a map key that is not a simple key: {s!r}")
        if "\n" in s:
            style = "literal"
        elif _resolves_to_string(s):
            style = "plain"
        else:
            style = "double"
        a = _analyze(s)
        if style == "plain" and not a["plain"]:
            style = "single"
        if style == "single" and not a["single"]:
            style = "double"
        if style == "literal" and (not a["block"] or key):
            style = "double"
        breaks = not key

        def next_not_space(i: int) -> bool:
            return not (i + 1 < len(s) and s[i + 1] == " ")

        if style == "plain":
            self.put(lead)
            self.spaced(s, indent, breaks, next_not_space)
        elif style == "single":
            self.put(lead + "'")
            self.spaced(s, indent, breaks, lambda i: 0 < i < len(s) - 1 and next_not_space(i), quote="'")
            self.put("'")
        elif style == "double":
            self.put(lead + '"')
            self.double(s, indent, breaks)
            self.put('"')
        else:
            self.put(lead)
            self.literal(s, indent)

    def spaced(self, s: str, indent: int, breaks: bool, may_break, quote: str = "") -> None:
        spaces = False
        for i, c in enumerate(s):
            if c == " ":
                if breaks and not spaces and self.col > _YAML_BEST_WIDTH and may_break(i):
                    self.newline_indent(indent)
                else:
                    self.put(c)
                spaces = True
            else:
                self.put(c + c if quote and c == quote else c)
                spaces = False

    def double(self, s: str, indent: int, breaks: bool) -> None:
        spaces = False
        short = {0: "0", 7: "a", 8: "b", 9: "t", 0x0A: "n", 0x0B: "v", 0x0C: "f", 0x0D: "r", 0x1B: "e",
                 0x22: '"', 0x5C: "\\", 0x85: "N", 0xA0: "_", 0x2028: "L", 0x2029: "P"}
        for i, c in enumerate(s):
            o = ord(c)
            if not _printable(c) or o == 0xFEFF or _is_break(c) or c in '"\\':
                if o in short:
                    self.put("\\" + short[o])
                elif o <= 0xFF:
                    self.put(f"\\x{o:02X}")
                elif o <= 0xFFFF:
                    self.put(f"\\u{o:04X}")
                else:
                    self.put(f"\\U{o:08X}")
                spaces = False
            elif c == " ":
                if breaks and not spaces and self.col > _YAML_BEST_WIDTH and i != 0 and i != len(s) - 1:
                    self.newline_indent(indent)
                    if i + 1 < len(s) and s[i + 1] == " ":
                        self.put("\\")
                else:
                    self.put(c)
                spaces = True
            else:
                self.put(c)
                spaces = False

    def literal(self, s: str, indent: int) -> None:
        hints = ""
        if s[0] == " " or _is_break(s[0]):
            hints += str(_YAML_INDENT)
        if not _is_break(s[-1]):
            hints += "-"
        elif len(s) == 1 or _is_break(s[-2]):
            hints += "+"
        self.put("|" + hints)
        self.put("\n")
        at_break = True
        for c in s:
            if _is_break(c):
                self.put("\n")
                at_break = True
            else:
                if at_break:
                    self.put(" " * indent)
                self.put(c)
                at_break = False

    # Collections --------------------------------------------------------------------------

    def mapping(self, m: dict, indent: int, inline: bool) -> None:
        for n, k in enumerate(_sorted_keys(m)):
            if not (n == 0 and inline):
                self.newline_indent(indent)
            self.string(k, indent + _YAML_INDENT, key=True, lead="")
            self.put(":")
            self.value(m[k], indent, in_mapping=True)

    def sequence(self, s: list, indent: int, inline: bool) -> None:
        for n, item in enumerate(s):
            if not (n == 0 and inline):
                self.newline_indent(indent)
            self.put("-")
            self.value(item, indent, in_mapping=False)

    def value(self, v, indent: int, in_mapping: bool) -> None:
        if isinstance(v, dict) and v:
            if in_mapping:
                self.mapping(v, indent + _YAML_INDENT, inline=False)
            else:
                self.put(" ")
                self.mapping(v, indent + _YAML_INDENT, inline=True)
        elif isinstance(v, list) and v:
            if in_mapping:
                self.sequence(v, indent, inline=False)
            else:
                self.put(" ")
                self.sequence(v, indent + _YAML_INDENT, inline=True)
        elif isinstance(v, dict):
            self.put(" {}")
        elif isinstance(v, list):
            self.put(" []")
        else:
            self.scalar(v, indent + _YAML_INDENT)


def _yaml_number(v) -> str:
    if isinstance(v, float) and not v.is_integer():
        return go_float(v)
    if isinstance(v, float):
        if -(2 ** 63) <= v < 2 ** 64:
            return str(int(v))
        return go_float(v)
    return str(v)


def _jsonish(v):
    """What JSON makes of a value: string keys, lists, no tuples."""
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else _fmt(k)): _jsonish(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        raise TemplateError("toYaml: JSON has no NaN or infinity")
    return v


def to_yaml(v) -> str:
    v = _jsonish(v)
    w = _YamlWriter()
    if isinstance(v, dict) and v:
        w.mapping(v, 0, inline=True)
    elif isinstance(v, list) and v:
        w.sequence(v, 0, inline=True)
    elif isinstance(v, dict):
        w.put("{}")
    elif isinstance(v, list):
        w.put("[]")
    else:
        # A scalar alone is indented as libyaml indents the first level.
        w.scalar(v, _YAML_INDENT, lead="")
    w.newline_indent(0)
    return "".join(w.parts)


# ---- Execution


class Renderer:
    """Renders a chart's templates the way Helm does, for the subset above."""

    def __init__(self, chart: Path) -> None:
        self.chart = chart
        self.defines: dict[str, tuple[list, str]] = {}
        self.files: dict[str, list] = {}
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        self.chart_name = meta["name"]
        self.meta = Struct({
            "Name": meta["name"], "Version": str(meta["version"]), "AppVersion": str(meta.get("appVersion", "")),
            "Description": meta.get("description", ""), "Type": meta.get("type", "application"),
            "APIVersion": meta.get("apiVersion", "v2"), "Keywords": meta.get("keywords", []),
        })
        tdir = chart / "templates"
        for path in sorted(p for p in tdir.rglob("*") if p.is_file()):
            name = f"{self.chart_name}/templates/{path.relative_to(tdir).as_posix()}"
            self.files[name] = _parse(_lex(path.read_text(), name), name, self.defines)

    def values(self, value_files: list[Path]) -> dict:
        defaults = _helm_values(self.chart / "values.yaml")
        user: dict = {}
        for f in value_files:
            user = _merge_maps(user, _helm_values(f))
        merged = _strip_nulls(_coalesce(user, defaults))
        schema_file = self.chart / "values.schema.json"
        if schema_file.is_file():
            try:
                import jsonschema
            except ImportError:
                jsonschema = None
            if jsonschema is not None:
                errors = sorted(jsonschema.Draft7Validator(json.loads(schema_file.read_text())).iter_errors(merged),
                                key=lambda e: list(e.path))
                if errors:
                    e = errors[0]
                    raise TemplateError(f"values don't meet the chart's schema: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        return merged

    def render(self, value_files: list[Path]) -> dict[str, str]:
        """Template name -> rendered text, for the templates Helm would output."""
        values = self.values(value_files)
        out = {}
        for name, nodes in self.files.items():
            base = name.rsplit("/", 1)[-1]
            if base.startswith("_") or base == "NOTES.txt":
                continue
            top = Struct({
                "Values": values,
                "Release": Struct({"Name": RELEASE, "Namespace": NAMESPACE, "Service": "Helm", "IsInstall": True,
                                   "IsUpgrade": False, "Revision": 1}),
                "Chart": self.meta,
                "Template": Struct({"Name": name, "BasePath": f"{self.chart_name}/templates"}),
            })
            text = self._exec(nodes, top, [("$", top)], 0)
            out[name] = text.replace("<no value>", "")
        return out

    # Nodes -------------------------------------------------------------------------------

    def _exec(self, nodes: list, dot, scope: list, depth: int) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                pipe, where = node[1], node[2]
                v = self._pipeline(pipe, dot, scope, depth, where)
                if not pipe["decl"]:
                    out.append(_fmt(v))
            elif kind == "if":
                _, branches, else_nodes, where = node
                mark = len(scope)
                for cond, body in branches:
                    if _truth(self._pipeline(cond, dot, scope, depth, where)):
                        out.append(self._exec(body, dot, scope, depth))
                        break
                else:
                    out.append(self._exec(else_nodes, dot, scope, depth))
                del scope[mark:]
            elif kind == "range":
                _, pipe, body, else_nodes, where = node
                mark = len(scope)
                names = pipe["decl"]
                seq = self._pipeline(dict(pipe, decl=[]), dot, scope, depth, where)
                if seq is None or seq is _MISSING:
                    items = []
                elif isinstance(seq, dict):
                    items = [(k, seq[k]) for k in sorted(seq)]
                elif isinstance(seq, (list, tuple)):
                    items = list(enumerate(seq))
                else:
                    raise TemplateError(f"{where}: range can't iterate over {_fmt(seq)}")
                for k, v in items:
                    inner = scope + ([(names[0], k), (names[1], v)] if len(names) == 2
                                     else [(names[0], v)] if names else [])
                    out.append(self._exec(body, v, inner, depth))
                if not items:
                    out.append(self._exec(else_nodes, dot, scope, depth))
                del scope[mark:]
        return "".join(out)

    def _pipeline(self, pipe: dict, dot, scope: list, depth: int, where: str):
        v = _MISSING
        for cmd in pipe["cmds"]:
            v = self._command(cmd, dot, scope, depth, where, v)
        if pipe["decl"]:
            if len(pipe["decl"]) != 1:
                raise TemplateError(f"{where}: too many declarations")
            name = pipe["decl"][0]
            if pipe.get("assign"):
                for i in range(len(scope) - 1, -1, -1):
                    if scope[i][0] == name:
                        scope[i] = (name, v)
                        break
                else:
                    raise TemplateError(f"{where}: undefined variable {name}")
            else:
                scope.append((name, v))
        return v

    def _command(self, cmd: list, dot, scope: list, depth: int, where: str, piped):
        head = cmd[0]
        if head[0] == "ident":
            args = cmd[1:]
            fn = head[1]
            if fn in ("and", "or"):
                vals = [lambda a=a: self._operand(a, dot, scope, depth, where) for a in args]
                if piped is not _MISSING:
                    vals.append(lambda: piped)
                if not vals:
                    raise TemplateError(f"{where}: {fn} needs arguments")
                for get in vals:
                    x = get()
                    if (fn == "and" and not _truth(x)) or (fn == "or" and _truth(x)):
                        return x
                return x
            values = [self._operand(a, dot, scope, depth, where) for a in args]
            if piped is not _MISSING:
                values.append(piped)
            return self._call(fn, values, depth, where)
        if len(cmd) > 1 or piped is not _MISSING:
            raise TemplateError(f"{where}: can't give an argument to a value that is not a function")
        return self._operand(head, dot, scope, depth, where)

    def _operand(self, op: tuple, dot, scope: list, depth: int, where: str):
        kind, val = op
        if kind == "lit":
            return val
        if kind == "pipe":
            return self._pipeline(dict(val, decl=[]), dot, scope, depth, where)
        if kind == "field":
            return _fields(dot, [] if val == "." else val[1:].split("."), where)
        if kind == "var":
            name, *chain = val.split(".")
            for n, v in reversed(scope):
                if n == name:
                    return _fields(v, chain, where)
            raise TemplateError(f"{where}: undefined variable {name}")
        if kind == "ident":
            return self._call(val, [], depth, where)
        raise TemplateError(f"{where}: unexpected {val}")

    def _call(self, fn: str, args: list, depth: int, where: str):
        def need(n: int) -> None:
            if len(args) != n:
                raise TemplateError(f"{where}: {fn} takes {n} arguments, not {len(args)}")

        if fn == "include":
            need(2)
            if depth > 100:
                raise TemplateError(f"{where}: include nested too deep")
            if args[0] not in self.defines:
                raise TemplateError(f"{where}: no template named {args[0]!r}")
            nodes, _ = self.defines[args[0]]
            return self._exec(nodes, args[1], [("$", args[1])], depth + 1)
        if fn == "toYaml":
            need(1)
            s = to_yaml(args[0])
            return s[:-1] if s.endswith("\n") else s
        if fn in ("indent", "nindent"):
            need(2)
            if not isinstance(args[0], int) or isinstance(args[0], bool) or not isinstance(args[1], str):
                raise TemplateError(f"{where}: {fn} takes a number of spaces (a literal) and a string")
            pad = " " * args[0]
            s = pad + args[1].replace("\n", "\n" + pad)
            return "\n" + s if fn == "nindent" else s
        if fn == "quote":
            return " ".join(_go_quote(_fmt(a)) for a in args if a is not None and a is not _MISSING)
        if fn == "default":
            need(2)
            return args[0] if _empty(args[1]) else args[1]
        if fn in ("eq", "ne"):
            if len(args) < 2 or (fn == "ne" and len(args) != 2):
                raise TemplateError(f"{where}: {fn} needs two arguments")
            a = args[0]
            result = False
            for b in args[1:]:
                if a is not None and b is not None and _kind(a) != _kind(b):
                    raise TemplateError(f"{where}: incompatible types for comparison: {_fmt(a)} and {_fmt(b)}")
                if a == b:
                    result = True
                    break
            return result if fn == "eq" else not result
        if fn == "not":
            need(1)
            return not _truth(args[0])
        if fn == "sha256sum":
            need(1)
            if not isinstance(args[0], str):
                raise TemplateError(f"{where}: sha256sum takes a string")
            return hashlib.sha256(args[0].encode()).hexdigest()
        raise TemplateError(f"{where}: function `{fn}` is not implemented here: keep the chart to the "
                            "template subset tests/deploy/k8s_check.py renders, or extend it")


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _fields(base, chain: list[str], where: str):
    for name in chain:
        if base is None or base is _MISSING:
            raise TemplateError(f"{where}: nil pointer evaluating .{name}")
        if isinstance(base, Struct):
            if name not in base:
                raise TemplateError(f"{where}: can't evaluate field {name}")
            base = base[name]
        elif isinstance(base, dict):
            base = base.get(name)
        else:
            raise TemplateError(f"{where}: can't evaluate field {name} in {_fmt(base)}")
    return base


_GO_PLAIN = "tag:portcullis.k8s-check,2026:go-yaml-plain"


class _HelmValuesLoader(yaml.SafeLoader):
    """YAML as Helm reads values: plain scalars as go-yaml v2 reads them (y and n are
    booleans, 1e3 a number, 1:20 a string), timestamps left as strings."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return _GO_PLAIN
        return super().resolve(kind, value, implicit)


def _construct_go_plain(loader, node):
    kind, value = _go_resolve(node.value)
    return node.value if kind == "timestamp" else value


_HelmValuesLoader.add_constructor(_GO_PLAIN, _construct_go_plain)


def _helm_values(path: Path) -> dict:
    data = yaml.load(path.read_text(), Loader=_HelmValuesLoader) or {}
    if not isinstance(data, dict):
        raise TemplateError(f"{rel(path)}: values must be a map")
    return _as_json_values(data)


def _as_json_values(v):
    """Values as Helm holds them after JSON: string keys, every number a float64."""
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else _fmt(_as_json_values(k))): _as_json_values(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_json_values(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def _merge_maps(a: dict, b: dict) -> dict:
    """Values files given in order: later ones win, maps merge."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_maps(out[k], v)
        else:
            out[k] = v
    return out


def _coalesce(user: dict, defaults: dict) -> dict:
    """User values over the chart's: maps merge; a null removes the default."""
    out = copy.deepcopy(user)
    for k, d in defaults.items():
        if k not in out:
            out[k] = copy.deepcopy(d)
        elif out[k] is None:
            del out[k]
        elif isinstance(out[k], dict) and isinstance(d, dict):
            out[k] = _coalesce(out[k], d)
    return out


def _strip_nulls(v):
    if isinstance(v, dict):
        return {k: _strip_nulls(x) for k, x in v.items() if x is not None}
    return v


# --------------------------------------------------------------------------------------------
# Rendering the chart


def helm_template(value_files: list[Path]) -> dict[str, str]:
    """`helm template`, split by source template."""
    cmd = ["helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in value_files:
        cmd += ["-f", str(f)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise TemplateError("helm template did not finish within 300s")
    if run.returncode != 0:
        raise TemplateError(f"helm template fails: {run.stderr.strip()}")
    out: dict[str, str] = {}
    for chunk in re.split(r"(?m)^---\s*$", run.stdout):
        m = re.search(r"(?m)^# Source: (\S+)\s*$", chunk)
        if m and chunk.strip():
            out[m.group(1)] = out.get(m.group(1), "") + "\n---\n" + chunk
    return out


def parse_rendered(rendered: dict[str, str], label: str, failures: Failures) -> list[Doc]:
    docs = []
    for name in sorted(rendered):
        path = CHART.parent / name
        docs += load_yaml_docs(rendered[name], f"{rel(path)} ({label})", failures)
    return docs


def by_template(docs: list[Doc]) -> dict[str, list]:
    out: dict[str, list] = {}
    for d in docs:
        out.setdefault(d.source, []).append(d.obj)
    return out


def first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'helm' if k in a else 'the built-in renderer'}"
            if a[k] != b[k]:
                return first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path or '(top)'}: helm {json.dumps(a)[:200]}, built-in {json.dumps(b)[:200]}"


def chart_cases() -> list[tuple[str, list[Path]]]:
    cases = [("default values", [])]
    for f in sorted((CHART / "ci").glob("*.yaml")):
        cases.append((f"values {f.relative_to(CHART)}", [f]))
    return cases


def render_chart(renderer_choice: str, failures: Failures) -> list[tuple[str, list[Doc]]]:
    have_helm = shutil.which("helm") is not None
    if renderer_choice == "helm" and not have_helm:
        give_up("--renderer helm, but helm is not on PATH")
    use_helm = have_helm and renderer_choice != "builtin"
    print(f"chart: rendered with {'helm template, and the built-in renderer for comparison' if use_helm else 'the built-in renderer'}")
    try:
        builtin = Renderer(CHART)
    except TemplateError as e:
        failures.fail(rel(CHART / "templates"), f"cannot be parsed: {e}")
        return []
    out = []
    for label, files in chart_cases():
        try:
            ours = parse_rendered(builtin.render(files), label, failures)
        except TemplateError as e:
            failures.fail(f"{rel(CHART)} ({label})", f"does not render: {e}")
            continue
        if use_helm:
            try:
                theirs = parse_rendered(helm_template(files), label, failures)
            except TemplateError as e:
                failures.fail(f"{rel(CHART)} ({label})", str(e))
                continue
            a, b = by_template(theirs), by_template(ours)
            for source in sorted(set(a) | set(b)):
                failures.check(a.get(source) == b.get(source), source,
                               "the built-in renderer disagrees with helm template: "
                               + first_difference(a.get(source), b.get(source)))
            docs = theirs
        else:
            docs = ours
        out.append((label, docs))
    return out


# --------------------------------------------------------------------------------------------
# The gateway's deployment


def parse_duration(s, where: str, failures: Failures) -> float | None:
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        return float(s)
    m = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?(?:ms|s|m|h|d)\s*)+)", str(s))
    if not m:
        failures.fail(where, f"cannot read the duration {s!r}")
        return None
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(s)))


def listen_port(addr) -> tuple[str, int | None]:
    m = re.fullmatch(r"\[?([^\]]*)\]?:(\d+)", str(addr or ""))
    return (m.group(1), int(m.group(2))) if m else ("", None)


def env_refs(node, path: str = "") -> list[tuple[str, str]]:
    """(key path, variable) of every `{ env: VARIABLE }` in a config."""
    out = []
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return [(path, node["env"])]
        for k, v in node.items():
            out += env_refs(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += env_refs(v, f"{path}[{i}]")
    return out


def selects(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def port_number(ref, ports: list[dict]):
    """A probe's or Service's port (a number or a name) as a container port number."""
    if isinstance(ref, int):
        return ref
    for p in ports:
        if p.get("name") == ref:
            return p.get("containerPort")
    return None


def check_gateway(workload: Doc, docs: list[Doc], binary: Path | None, failures: Failures,
                  checked_configs: dict) -> None:
    where = workload.where()
    spec = workload.obj.get("spec") or {}
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    containers = pod.get("containers") or []
    gw = next(c for c in containers if c.get("name") == GATEWAY)
    cw = f"{where} container {GATEWAY}"

    # Security.
    psc = pod.get("securityContext") or {}
    csc = gw.get("securityContext") or {}

    def effective(key):
        return csc.get(key, psc.get(key))

    failures.check(effective("runAsNonRoot") is True, cw, "securityContext.runAsNonRoot must be true")
    uid = effective("runAsUser")
    failures.check(isinstance(uid, int) and uid > 0, cw, "securityContext.runAsUser must be a fixed non-root UID")
    failures.check(csc.get("readOnlyRootFilesystem") is True, cw, "securityContext.readOnlyRootFilesystem must be true")
    failures.check(csc.get("allowPrivilegeEscalation") is False, cw, "securityContext.allowPrivilegeEscalation must be false")
    failures.check(csc.get("privileged") is not True, cw, "must not be privileged")
    caps = csc.get("capabilities") or {}
    failures.check("ALL" in (caps.get("drop") or []), cw, "securityContext.capabilities.drop must include ALL")
    failures.check(not caps.get("add"), cw, "securityContext.capabilities.add must be empty")
    seccomp = (effective("seccompProfile") or {}).get("type")
    failures.check(seccomp in ("RuntimeDefault", "Localhost"), cw, "seccompProfile.type must be RuntimeDefault (or Localhost)")
    res = gw.get("resources") or {}
    failures.check(bool((res.get("requests") or {}).get("memory")) and bool((res.get("requests") or {}).get("cpu")),
                   cw, "resources.requests must set cpu and memory")
    failures.check(bool((res.get("limits") or {}).get("memory")), cw, "resources.limits must set memory")

    # The config: --config FILE, in a folder mounted from a ConfigMap.
    args = list(gw.get("command") or []) + list(gw.get("args") or [])
    config_path = None
    if "--config" in args and args.index("--config") + 1 < len(args):
        config_path = args[args.index("--config") + 1]
    failures.check("serve" in args and config_path is not None, cw, "args must be serve --config FILE")
    if config_path is None:
        return
    folder, _, file_name = config_path.rpartition("/")
    mounts = gw.get("volumeMounts") or []
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mount = next((m for m in mounts if m.get("mountPath", "").rstrip("/") == folder), None)
    if not failures.check(mount is not None, cw, f"no volume is mounted at {folder}, the folder of {config_path}"):
        return
    failures.check(not mount.get("subPath") and not mount.get("subPathExpr"), cw,
                   f"the config folder {folder} must be mounted whole: a subPath mount receives no ConfigMap updates")
    failures.check(mount.get("readOnly") is True, cw, f"the config folder {folder} should be mounted readOnly")
    volume = volumes.get(mount.get("name")) or {}
    cm_name = (volume.get("configMap") or {}).get("name")
    if not failures.check(cm_name is not None, cw, f"the volume mounted at {folder} must be a ConfigMap"):
        return
    cm = next((d for d in docs if d.kind == "ConfigMap" and d.name == cm_name), None)
    if not failures.check(cm is not None, cw, f"ConfigMap {cm_name} is not among the manifests"):
        return
    data = cm.obj.get("data") or {}
    if not failures.check(file_name in data, cm.where(), f"has no key {file_name} (the gateway's --config)"):
        return
    try:
        config = yaml.safe_load(data[file_name]) or {}
    except yaml.YAMLError as e:
        failures.fail(cm.where(), f"{file_name} is not valid YAML: {e}")
        return
    if not failures.check(isinstance(config, dict), cm.where(), f"{file_name} must be a YAML map"):
        return
    server = config.get("server") or {}
    admin = config.get("admin") or {}

    # Ports.
    ports = gw.get("ports") or []
    http_port = port_number("http", ports)
    admin_port = port_number("admin", ports)
    _, listen = listen_port(server.get("listen"))
    admin_host, admin_listen = listen_port(admin.get("listen"))
    failures.check(http_port is not None and http_port == listen, cw,
                   f"the container port named http ({http_port}) must be server.listen's port ({listen})")
    failures.check(admin_port is not None and admin_port == admin_listen, cw,
                   f"the container port named admin ({admin_port}) must be admin.listen's port ({admin_listen})")
    failures.check(admin_host not in ("127.0.0.1", "::1", "localhost", ""), cw,
                   f"admin.listen ({admin.get('listen')}) must not be loopback: the kubelet probes the pod's IP")
    if "prometheus.io/port" in annotations:
        failures.check(str(annotations["prometheus.io/port"]) == str(admin_port), where,
                       "the prometheus.io/port annotation must be the admin port")

    # Probes.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (gw.get(probe) or {}).get("httpGet") or {}
        failures.check(get.get("path") == path, cw, f"{probe} must GET {path}")
        failures.check(get.get("port") is not None and port_number(get.get("port"), ports) == admin_port, cw,
                       f"{probe} must use the admin port")

    # Shutdown: the gateway delays and drains by itself.
    failures.check(not (gw.get("lifecycle") or {}).get("preStop"), cw,
                   "must have no preStop hook: the gateway delays its own shutdown (server.shutdown_delay)")
    delay = parse_duration(server.get("shutdown_delay", f"{DEFAULT_SHUTDOWN_DELAY}s"), cm.where(), failures)
    drain = parse_duration(server.get("drain_timeout", f"{DEFAULT_DRAIN_TIMEOUT}s"), cm.where(), failures)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    failures.check(isinstance(grace, int) and grace > DEFAULT_SHUTDOWN_DELAY + DEFAULT_DRAIN_TIMEOUT, where,
                   f"terminationGracePeriodSeconds ({grace}) must exceed 35, the default shutdown_delay + drain_timeout")
    if delay is not None and drain is not None:
        failures.check(isinstance(grace, int) and grace > delay + drain, where,
                       f"terminationGracePeriodSeconds ({grace}) must exceed server.shutdown_delay + "
                       f"server.drain_timeout ({delay:g}s + {drain:g}s)")
    ready = gw.get("readinessProbe") or {}
    noticed = ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)
    if delay:
        failures.check(noticed < delay, cw,
                       f"readinessProbe notices a shutdown after periodSeconds x failureThreshold = {noticed}s, "
                       f"which must be less than server.shutdown_delay ({delay:g}s)")

    # State: the usage journal needs a writable folder.
    state = config.get("state") or {}
    if state.get("backend", "memory") == "memory":
        path = state.get("path")
        if failures.check(isinstance(path, str) and path.startswith("/"), cm.where(),
                          "state.path must be set (to a file on a writable volume): the config folder is read-only"):
            target = next((m for m in mounts if path.startswith(m.get("mountPath", "").rstrip("/") + "/")), None)
            volume = volumes.get(target.get("name")) if target else None
            writable = target is not None and not target.get("readOnly") and volume is not None and \
                any(k in volume for k in ("emptyDir", "ephemeral", "persistentVolumeClaim"))
            failures.check(writable, cw, f"state.path ({path}) must be on a writable emptyDir or volume mount")

    # Secrets: every { env: VARIABLE } is set in the container.
    env = {e.get("name"): e for e in gw.get("env") or []}
    env_from = gw.get("envFrom") or []
    for key, var in env_refs(config):
        failures.check(var in env or bool(env_from), cw, f"{key} reads the environment variable {var}, which is not set")
        ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret = next((d for d in docs if d.kind == "Secret" and d.name == ref.get("name")), None)
            if secret is not None:
                keys = set((secret.obj.get("data") or {})) | set((secret.obj.get("stringData") or {}))
                failures.check(ref.get("key") in keys, secret.where(), f"has no key {ref.get('key')} (for {var})")

    # Services: the gateway's public port only.
    services = [d for d in docs if d.kind == "Service" and selects((d.obj.get("spec") or {}).get("selector"), pod_labels)]
    failures.check(bool(services), where, "no Service selects the gateway's pods")
    for svc in services:
        for p in (svc.obj.get("spec") or {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            failures.check(port_number(target, ports) == http_port and target != "admin", svc.where(),
                           f"port {p.get('name') or p.get('port')} must target the gateway's http port, not {target}")

    # Replicated gateways: disruption budget and spreading.
    replicas = spec.get("replicas", 1)
    alone = [c.get("name") for c in containers] == [GATEWAY]
    if alone and isinstance(replicas, int) and replicas > 1:
        pdbs = [d for d in docs if d.kind == "PodDisruptionBudget"
                and selects(((d.obj.get("spec") or {}).get("selector") or {}).get("matchLabels"), pod_labels)]
        failures.check(bool(pdbs), where, "an edge gateway with replicas needs a PodDisruptionBudget")
        for pdb in pdbs:
            s = pdb.obj.get("spec") or {}
            failures.check(s.get("maxUnavailable") == 1 or s.get("minAvailable") == replicas - 1, pdb.where(),
                           "must let one replica go at a time (maxUnavailable: 1 or a minAvailable below replicas)")
        spread = pod.get("topologySpreadConstraints") or \
            ((pod.get("affinity") or {}).get("podAntiAffinity"))
        failures.check(bool(spread), where, "an edge gateway with replicas needs topologySpreadConstraints or podAntiAffinity")

    # portcullis check.
    if binary is not None:
        files = {k: v for k, v in data.items()}
        fingerprint = json.dumps(files, sort_keys=True)
        if fingerprint in checked_configs:
            failures.check(checked_configs[fingerprint] is None, cm.where(), checked_configs[fingerprint] or "")
            return
        with tempfile.TemporaryDirectory(prefix="portcullis-k8s-check-") as tmp:
            for k, v in files.items():
                (Path(tmp) / k).write_text(v)
            run_env = dict(os.environ)
            for _, var in env_refs(config):
                run_env[var] = PLACEHOLDER_SECRET
            try:
                run = subprocess.run([str(binary), "check", "--config", str(Path(tmp) / file_name)],
                                     capture_output=True, text=True, env=run_env, timeout=120)
            except subprocess.TimeoutExpired:
                give_up(f"`{binary} check` did not finish within 120s")
            problem = None
            if run.returncode != 0:
                output = (run.stdout + run.stderr).strip().replace(tmp + "/", "")
                problem = f"`portcullis check` refuses {file_name}:\n    " + output.replace("\n", "\n    ")
            checked_configs[fingerprint] = problem
            failures.check(problem is None, cm.where(), problem or "")


def check_workloads(label: str, docs: list[Doc], binary: Path | None, failures: Failures,
                    checked_configs: dict, need_gateway: bool) -> None:
    gateways = 0
    for d in docs:
        if d.kind not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        containers = (((d.obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        images = [str(c.get("image", "")) for c in containers]
        named = [c for c in containers if c.get("name") == GATEWAY]
        if not named:
            failures.check(not any("portcullis/portcullis" in i for i in images), d.where(),
                           f"runs the gateway's image in a container not named {GATEWAY}")
            continue
        gateways += 1
        check_gateway(d, docs, binary, failures, checked_configs)
    if need_gateway:
        failures.check(gateways > 0, label, f"no Deployment with a container named {GATEWAY}")


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", help="a portcullis binary: its `check` must accept every config")
    parser.add_argument("--renderer", choices=("auto", "helm", "builtin"), default="auto",
                        help="how to render the chart: helm template if on PATH (auto), or the built-in renderer")
    args = parser.parse_args()
    binary = Path(args.binary).resolve() if args.binary else None
    if binary is not None and not (binary.is_file() and os.access(binary, os.X_OK)):
        give_up(f"{args.binary} is not an executable file")
    failures = Failures()
    checked_configs: dict = {}
    print(f"Kubernetes versions: {', '.join(KUBERNETES_VERSIONS)}; "
          f"{'configs checked with ' + str(binary) if binary else 'no binary given: configs not checked'}")

    # Plain manifests: every file, then each kustomization's build.
    manifests = sorted(p for p in KUSTOMIZE_ROOT.rglob("*.y*ml") if p.name not in KUSTOMIZATION_FILES)
    all_docs: list[Doc] = []
    for p in manifests:
        all_docs += load_yaml_docs(p.read_text(), rel(p), failures)
    validate_docs(all_docs, failures)
    kdirs = sorted({p.parent for p in KUSTOMIZE_ROOT.rglob("*") if p.name in KUSTOMIZATION_FILES})
    referenced = set()
    builds = {}
    for kdir in kdirs:
        builds[kdir] = kustomize_resources(kdir, failures)
        k = yaml.safe_load(kustomization_file(kdir).read_text()) or {}
        referenced |= {(kdir / str(r)).resolve() for r in k.get("resources") or [] if (kdir / str(r)).is_dir()}
    listed = {d.source for docs in builds.values() for d in docs}
    print("kustomize: builds " + ("cross-checked with `kubectl kustomize`" if shutil.which("kubectl")
                                  else "not cross-checked (kubectl not on PATH)"))
    for kdir, docs in builds.items():
        seen = set()
        for d in docs:
            key = (d.obj.get("apiVersion"), d.kind, d.name)
            failures.check(key not in seen, d.where(), "listed twice in one kustomization build")
            seen.add(key)
        kustomize_cross_check(kdir, docs, failures)
        check_workloads(rel(kdir), docs, binary, failures, checked_configs, need_gateway=kdir.resolve() not in referenced)
    print(f"kustomize: {len(manifests)} files, {len(kdirs)} kustomizations "
          f"({', '.join(rel(k) for k in kdirs)}); not in any: "
          f"{', '.join(sorted(set(rel(p) for p in manifests) - listed)) or 'none'}")

    # The chart.
    for label, docs in render_chart(args.renderer, failures):
        validate_docs(docs, failures)
        check_workloads(f"{rel(CHART)} ({label})", docs, binary, failures, checked_configs, need_gateway=True)
        print(f"chart ({label}): {len(docs)} objects")

    if failures.failed:
        print(f"\n{failures.passed} passed, {len(failures.failed)} failed")
        return 1
    print(f"\n{failures.passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
