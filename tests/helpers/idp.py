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

Certificate thumbprints (RFC 8705): POST /x5t {"pem"} -> {"x5t#S256"}.

DPoP clients (RFC 9449), for proofs made independently of the gateway:
  POST /dpop/holder {"holder", "alg", "bits"?} creates the holder's key pair -> {"jkt", "jwk"}
                                              ("bits": an RSA key of that size)
  POST /dpop/proof  {"holder", "htm", "htu", "token"?, "iat"?, "jti"?, "nonce"?, "claims"?,
                     "attack"?}               -> proof text
     attacks: "private_jwk" (the private key in the header), "hs256" (a symmetric algorithm,
     HMAC with the public key's thumbprint), "typ" (typ JWT), "no_jwk", "bad_sig"

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


HOLDERS = {}


def thumbprint(jwk):
    """RFC 7638: the required members, sorted, no whitespace, SHA-256, base64url."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def dpop_holder(req):
    alg = req.get("alg", "ES256")
    if "bits" in req:
        key = rsa.generate_private_key(public_exponent=65537, key_size=req["bits"])
    else:
        key = new_key(alg)
    jwk = public_jwk(None, alg, key)
    for k in ("kid", "alg", "use"):
        jwk.pop(k, None)
    with LOCK:
        HOLDERS[req["holder"]] = (alg, key, jwk)
    return {"jkt": thumbprint(jwk), "jwk": jwk}


def dpop_proof(req):
    import time
    import uuid

    with LOCK:
        alg, key, jwk = HOLDERS[req["holder"]]
    attack = req.get("attack")
    claims = {"htm": req["htm"], "htu": req["htu"], "iat": int(req.get("iat", time.time())), "jti": req.get("jti") or str(uuid.uuid4())}
    if req.get("token") is not None:
        claims["ath"] = b64(hashlib.sha256(req["token"].encode()).digest())
    if req.get("nonce") is not None:
        claims["nonce"] = req["nonce"]
    claims.update(req.get("claims", {}))
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": dict(jwk)}
    if attack == "private_jwk":
        priv = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)) if alg.startswith("ES") else json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
        header["jwk"] = priv
    if attack == "typ":
        header["typ"] = "JWT"
    if attack == "no_jwk":
        del header["jwk"]
    if attack == "hs256":
        header["alg"] = "HS256"
        si = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
        return si.decode() + "." + b64(hmac.new(thumbprint(jwk).encode(), si, hashlib.sha256).digest())
    si = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    sig = sign_raw(key, alg, si)
    if attack == "bad_sig":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    return si.decode() + "." + b64(sig)


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
                aliases = STATE.setdefault("aliases", {})
                keys = [public_jwk(aliases.get(k, k), STATE["keys"][k][0], STATE["keys"][k][1]) for k in STATE["published"]]
                age = STATE["max_age"]
            return self.send_json({"keys": keys}, extra={"Cache-Control": "max-age=%d" % age})
        self.send_json({"error": "not found"}, 404)

    def do_POST(self):
        self.raw_body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = json.loads(self.raw_body or b"{}") if self.path != "/introspect" else {}
        if self.path == "/admin/keys":
            key = new_key(req["alg"])
            with LOCK:
                STATE["keys"][req["kid"]] = (req["alg"], key)
                if "publish_kid" in req:  # published under another kid (to make sets that repeat one)
                    STATE.setdefault("aliases", {})[req["kid"]] = req["publish_kid"]
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
        if self.path == "/x5t":
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(req["pem"].encode())
            return self.send_json({"x5t#S256": b64(cert.fingerprint(hashes.SHA256()))})
        if self.path == "/dpop/holder":
            return self.send_json(dpop_holder(req))
        if self.path == "/introspect":
            # RFC 7662, for tokens this IdP was told are active (`/admin/opaque`); form-encoded.
            from urllib.parse import parse_qs

            form = parse_qs(self.raw_body.decode())
            token = form.get("token", [""])[0]
            with LOCK:
                claims = STATE.setdefault("opaque", {}).get(token)
            return self.send_json({"active": True, **claims} if claims else {"active": False})
        if self.path == "/admin/opaque":
            with LOCK:
                STATE.setdefault("opaque", {})[req["token"]] = req["claims"]
            return self.send_json({})
        if self.path in ("/mint", "/dpop/proof"):
            token = mint(req) if self.path == "/mint" else dpop_proof(req)
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
