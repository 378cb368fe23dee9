"""emqx_auth_jwt against the real binary, with tokens made by PyJWT (and by hand where
PyJWT refuses to make an attack token)."""

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import V5, Client, unique_id
from rawmqtt import RawClient

NOT_AUTHORIZED_V5, NOT_AUTHORIZED_V3 = 0x87, 5
SECRET = "test-secret-0123456789"


def connack(broker, client_id=None, username=None, password=None, version=5):
    with RawClient(broker.port, version=version) as c:
        return c.connect(client_id or unique_id("jwt"), username=username, password=password)["rc"]


def load(broker, plugin):
    out = broker.ctl("plugins", "load", plugin).stdout
    assert out == f"Plugin {plugin} loaded successfully.\n", out


def hs(claims, secret=SECRET, alg="HS256"):
    return jwt.encode(claims, secret, algorithm=alg)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_pair(key):
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_hs_tokens_expiry_not_before_and_not_a_token(broker_factory):
    b = broker_factory(overrides={"auth.jwt.secret": SECRET})
    load(b, "emqx_auth_jwt")
    now = int(time.time())
    for alg in ("HS256", "HS384", "HS512"):
        assert connack(b, password=hs({"sub": "x", "exp": now + 60}, alg=alg)) == 0, alg
    assert connack(b, password=hs({"sub": "x"})) == 0  # exp is optional, as in EMQX 4
    assert connack(b, password=hs({"exp": now + 60}, secret="wrong")) == NOT_AUTHORIZED_V5
    # v3.1.1 sends a password only with a username.
    assert connack(b, username="u", password=hs({"exp": now + 60}, secret="wrong"), version=4) == NOT_AUTHORIZED_V3
    assert connack(b, username="u", password=hs({"exp": now + 60}), version=4) == 0
    assert connack(b, password=hs({"exp": now - 10})) == NOT_AUTHORIZED_V5
    assert connack(b, password=hs({"nbf": now + 60})) == NOT_AUTHORIZED_V5
    assert connack(b, password=hs({"exp": "never"})) == NOT_AUTHORIZED_V5
    # alg none: an unsigned token.
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(b'{"sub":"x"}') + "."
    assert connack(b, password=unsigned) == NOT_AUTHORIZED_V5
    # A tampered payload under a valid signature.
    good = hs({"sub": "x", "role": "user"})
    h, _, sig = good.split(".")
    forged = b64(json.dumps({"sub": "x", "role": "admin"}).encode())
    assert connack(b, password=f"{h}.{forged}.{sig}") == NOT_AUTHORIZED_V5
    # Not a token at all: not this plugin's (allow_anonymous decides).
    assert connack(b, password="public") == 0
    assert connack(b) == 0
    # A paho client with a token.
    c = Client(b.port, protocol=V5, username="any", password=hs({"exp": now + 60}))
    assert c.connect()[0] == 0
    c.disconnect()


def test_a_non_token_falls_through_to_the_next_plugin(broker_factory):
    b = broker_factory(overrides={"auth.jwt.secret": SECRET, "allow_anonymous": "false"})
    load(b, "emqx_auth_jwt")
    load(b, "emqx_auth_username")
    assert b.ctl("users", "add", "alice", "plainpw").stdout == "ok\n"
    assert connack(b, username="alice", password="plainpw") == 0
    assert connack(b, username="bob", password="plainpw") == NOT_AUTHORIZED_V5
    assert connack(b, username="bob", password=hs({"sub": "bob"})) == 0


def test_token_from_username_and_verified_claims(broker_factory):
    b = broker_factory(
        start=False,
        overrides={
            "auth.jwt.secret": SECRET,
            "auth.jwt.from": "username",
            "auth.jwt.verify_claims": "on",
            "auth.jwt.verify_claims.sub": "%c",
            "auth.jwt.verify_claims.tenant": "acme",
        }
    )
    b.data_dir.mkdir(parents=True)
    (b.data_dir / "loaded_plugins").write_text("{emqx_auth_jwt, true}.\n")
    b.start()
    token = hs({"sub": "dev-1", "tenant": "acme"})
    assert connack(b, client_id="dev-1", username=token) == 0
    assert connack(b, client_id="dev-2", username=token) == NOT_AUTHORIZED_V5
    assert connack(b, client_id="dev-1", username=hs({"sub": "dev-1", "tenant": "evil"})) == NOT_AUTHORIZED_V5
    assert connack(b, client_id="dev-1", username=hs({"sub": "dev-1"})) == NOT_AUTHORIZED_V5
    # The password is not looked at when the token comes from the username.
    assert connack(b, client_id="dev-1", username="plain", password=token) == 0


def test_rsa_and_ec_public_keys_and_algorithm_confusion(broker_factory):
    rsa_private, rsa_public = pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    b = broker_factory(start=False)
    (b.root / "jwt_rsa.pem").write_bytes(rsa_public)
    b.overrides.update({"auth.jwt.secret": SECRET, "auth.jwt.pubkey": str(b.root / "jwt_rsa.pem")})
    b.start()
    load(b, "emqx_auth_jwt")
    exp = int(time.time()) + 60
    for alg in ("RS256", "RS384", "RS512", "PS256"):
        assert connack(b, password=jwt.encode({"exp": exp}, rsa_private, algorithm=alg)) == 0, alg
    other_private, _ = pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert connack(b, password=jwt.encode({"exp": exp}, other_private, algorithm="RS256")) == NOT_AUTHORIZED_V5
    # Algorithm confusion: HS256 with the public key's PEM as the HMAC secret.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"exp": exp}).encode())
    sig = hmac.new(rsa_public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert connack(b, password=f"{header}.{body}.{b64(sig)}") == NOT_AUTHORIZED_V5
    # An ES token against an RSA key.
    ec_private, ec_public = pem_pair(ec.generate_private_key(ec.SECP256R1()))
    assert connack(b, password=jwt.encode({"exp": exp}, ec_private, algorithm="ES256")) == NOT_AUTHORIZED_V5
    # The secret still serves HS tokens.
    assert connack(b, password=hs({"exp": exp})) == 0

    # An EC key in the file, read at the next start (the plugin restarts from data/loaded_plugins).
    b.stop()
    (b.root / "jwt_rsa.pem").write_bytes(ec_public)
    b.start()
    assert connack(b, password=jwt.encode({"exp": exp}, ec_private, algorithm="ES256")) == 0
    assert connack(b, password=jwt.encode({"exp": exp}, rsa_private, algorithm="RS256")) == NOT_AUTHORIZED_V5


def test_a_missing_key_file_refuses_the_load_with_the_key(broker_factory):
    b = broker_factory(overrides={"auth.jwt.pubkey": "/nonexistent/jwt.pem"})
    out = b.ctl("plugins", "load", "emqx_auth_jwt").stdout
    assert out.startswith("Load plugin emqx_auth_jwt error: "), out
    assert "auth.jwt.pubkey: expected a readable PEM file" in out, out
    assert connack(b, password=hs({})) == 0  # not loaded: nothing checks tokens
