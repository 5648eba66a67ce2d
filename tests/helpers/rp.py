"""A relying party for the gateway's tests: what a service behind the gateway would do with
the tokens it receives, using libraries independent of the gateway (PyJWT, jwcrypto,
cryptography).

    rp.py OPERATION < request.json > result.json

Operations (request → result):
  verify        {"jwks_url", "token", "audience", "issuer", "algorithms"?}
                → {"ok": true, "claims", "header"} | {"ok": false, "error"}
                Fetches the gateway's JWKS (PyJWKClient) and verifies signature, exp, iss, aud.
  enc_keygen    {"crv": "P-256" | "P-384" | "X25519", "kid"}  → {"public", "private"} (JWKs)
  decrypt       {"private", "token"}  → {"ok": true, "plaintext", "header"} | {"ok": false, "error"}
  sig_keygen    {"alg": "ES256" | "EdDSA" | "RS256", "kid"}
                → {"private_pem" (PKCS#8), "jwks" (the public key set)}
  sign          {"private_pem", "alg", "kid", "claims", "typ"?}  → {"token"}
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwe, jwk


def verify(req):
    try:
        client = jwt.PyJWKClient(req["jwks_url"], cache_keys=False)
        key = client.get_signing_key_from_jwt(req["token"])
        claims = jwt.decode(
            req["token"],
            key.key,
            algorithms=req.get("algorithms", ["ES256", "ES384", "EdDSA", "PS256", "RS256"]),
            audience=req["audience"],
            issuer=req["issuer"],
            options={"require": ["exp", "iat", "iss", "aud", "jti"]},
        )
        return {"ok": True, "claims": claims, "header": jwt.get_unverified_header(req["token"])}
    except Exception as e:  # the test asserts on the outcome, whatever the cause
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def enc_keygen(req):
    crv = req.get("crv", "P-256")
    kty = "OKP" if crv == "X25519" else "EC"
    key = jwk.JWK.generate(kty=kty, crv=crv, kid=req.get("kid", "enc-1"), use="enc")
    return {"public": json.loads(key.export_public()), "private": json.loads(key.export_private())}


def decrypt(req):
    try:
        key = jwk.JWK(**req["private"])
        token = jwe.JWE()
        token.deserialize(req["token"], key=key)
        return {"ok": True, "plaintext": token.payload.decode(), "header": json.loads(token.objects["protected"])}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def sig_keygen(req):
    alg = req.get("alg", "ES256")
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = json.loads(jwk.JWK.from_pem(pem.encode()).export_public())
    public.update({"kid": req.get("kid", "k1"), "alg": alg, "use": "sig"})
    return {"private_pem": pem, "jwks": {"keys": [public]}}


def sign(req):
    headers = {"kid": req["kid"]}
    if "typ" in req:
        headers["typ"] = req["typ"]
    return {"token": jwt.encode(req["claims"], req["private_pem"], algorithm=req["alg"], headers=headers)}


OPERATIONS = {"verify": verify, "enc_keygen": enc_keygen, "decrypt": decrypt, "sig_keygen": sig_keygen, "sign": sign}

if __name__ == "__main__":
    print(json.dumps(OPERATIONS[sys.argv[1]](json.load(sys.stdin))))
