"""An identity provider for the gateway's tests, built on PyJWT and cryptography: an
implementation independent of the gateway's own JOSE code.

    idp.py            starts on a free loopback port and prints its base URL

It serves
  GET  /.well-known/openid-configuration   discovery (issuer = base URL)
  GET  /jwks.json                           the published keys (Cache-Control: max-age=<max_age>)
and is driven by the tests through
  POST /admin/keys    {"kid", "alg"}          creates a key and publishes it
  POST /admin/unpublish {"kid"}               removes a key from the JWKS (it can still sign)
  POST /admin/mode    {"mode": "ok"|"error"|"drop", "max_age": n}
  GET  /admin/stats                           {"jwks": fetches, "discovery": fetches}
  POST /mint          {"kid", "claims", "header"?, "alg"?, "attack"?}  -> token text

Attacks ("attack"): "none" (alg none, empty signature), "hmac_public_pem" (HS256 keyed with
the RSA public key's PEM: algorithm confusion), "zero_sig" (ECDSA r = s = 0), "order_sig"
(ECDSA r = n, the curve order), "raw" (header and payload used as given, JSON or not, and
signed with the key: for malformed claims).
"""

import base64
import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

STATE = {"keys": {}, "published": [], "mode": "ok", "max_age": 300, "stats": {"jwks": 0, "discovery": 0}}
LOCK = threading.Lock()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(kid, alg, key):
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pub))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        d = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pub))
    else:
        d = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(pub))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


def sign_raw(key, alg, signing_input):
    if isinstance(key, rsa.RSAPrivateKey):
        h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(h), h.digest_size)
        return key.sign(signing_input, pad, h)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        h = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(h)))
        n = 32 if alg == "ES256" else 48
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    return key.sign(signing_input)


def mint(req):
    kid = req.get("kid")
    with LOCK:
        alg, key = STATE["keys"][kid] if kid in STATE["keys"] else (None, None)
    alg = req.get("alg", alg)
    claims = req.get("claims", {})
    header = {"typ": "JWT", "kid": kid, **req.get("header", {})}
    attack = req.get("attack")
    if attack == "none":
        h = {**header, "alg": req.get("alg", "none")}
        return b64(json.dumps(h).encode()) + "." + b64(json.dumps(claims).encode()) + "."
    if attack == "hmac_public_pem":
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        h = {**header, "alg": "HS256"}
        si = (b64(json.dumps(h).encode()) + "." + b64(json.dumps(claims).encode())).encode()
        return si.decode() + "." + b64(hmac.new(pem, si, hashlib.sha256).digest())
    if attack in ("zero_sig", "order_sig"):
        h = {**header, "alg": "ES256"}
        si = b64(json.dumps(h).encode()) + "." + b64(json.dumps(claims).encode())
        sig = bytes(64) if attack == "zero_sig" else P256_ORDER.to_bytes(32, "big") + (1).to_bytes(32, "big")
        return si + "." + b64(sig)
    if attack == "raw":
        h = req["raw_header"].encode() if "raw_header" in req else json.dumps({**header, "alg": alg}).encode()
        p = req["raw_payload"].encode() if "raw_payload" in req else json.dumps(claims).encode()
        si = (b64(h) + "." + b64(p)).encode()
        return si.decode() + "." + b64(sign_raw(key, alg, si))
    # The ordinary case: PyJWT does the work.
    extra = {k: v for k, v in header.items() if k not in ("alg",)}
    if extra.get("kid") is None:
        extra.pop("kid", None)
    return jwt.encode(claims, key, algorithm=alg, headers=extra)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, obj, status=200, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def base(self):
        return "http://%s:%d" % self.server.server_address[:2]

    def do_GET(self):
        with LOCK:
            mode = STATE["mode"]
        if self.path.startswith("/admin/stats"):
            with LOCK:
                return self.send_json(STATE["stats"])
        if mode == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if mode == "error":
            return self.send_json({"error": "unavailable"}, 503)
        if self.path == "/.well-known/openid-configuration":
            with LOCK:
                STATE["stats"]["discovery"] += 1
            return self.send_json({"issuer": self.base(), "jwks_uri": self.base() + "/jwks.json"})
        if self.path == "/jwks.json":
            with LOCK:
                STATE["stats"]["jwks"] += 1
                keys = [public_jwk(k, STATE["keys"][k][0], STATE["keys"][k][1]) for k in STATE["published"]]
                age = STATE["max_age"]
            return self.send_json({"keys": keys}, extra={"Cache-Control": "max-age=%d" % age})
        self.send_json({"error": "not found"}, 404)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/admin/keys":
            key = new_key(req["alg"])
            with LOCK:
                STATE["keys"][req["kid"]] = (req["alg"], key)
                if req.get("publish", True):
                    STATE["published"].append(req["kid"])
            return self.send_json(public_jwk(req["kid"], req["alg"], key))
        if self.path == "/admin/unpublish":
            with LOCK:
                STATE["published"] = [k for k in STATE["published"] if k != req["kid"]]
            return self.send_json({})
        if self.path == "/admin/mode":
            with LOCK:
                STATE["mode"] = req.get("mode", STATE["mode"])
                STATE["max_age"] = req.get("max_age", STATE["max_age"])
            return self.send_json({})
        if self.path == "/mint":
            token = mint(req)
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_json({"error": "not found"}, 404)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("http://%s:%d" % server.server_address[:2], flush=True)
    server.serve_forever()
