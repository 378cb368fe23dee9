"""emqx_auth_http against the real binary and a real HTTP server (Python's http.server
in a thread on 127.0.0.1) that records every request and answers as each test says."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import unique_id
from rawmqtt import PUBACK, RawClient, publish

BAD_PASSWORD_V5, NOT_AUTHORIZED_V5 = 0x86, 0x87


class AuthServer:
    """Records (method, path, raw query, headers, body) and answers with `answer(req)` ->
    (status, body[, delay_s])."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.answers = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                url = urlsplit(self.path)
                req = {
                    "method": self.command,
                    "path": url.path,
                    "query": url.query,
                    "params": {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
                ctype = req["headers"].get("content-type", "")
                if "json" in ctype:
                    req["params"].update(json.loads(body))
                elif body:
                    req["params"].update({k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()})
                with outer.lock:
                    outer.requests.append(req)
                answer = outer.answers.get(url.path, lambda r: (404, "no"))
                status, text, *delay = answer(req)
                if delay:
                    time.sleep(delay[0])
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the broker gave up on us

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path):
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = AuthServer()
    yield s
    s.close()


def http_broker(broker_factory, server, **overrides):
    settings = {
        "auth.http.auth_req": server.url("/auth"),
        "auth.http.super_req": server.url("/superuser"),
        "auth.http.acl_req": server.url("/acl"),
        "auth.http.request.timeout": "1s",
        "auth.http.request.retry_interval": "100ms",
    }
    settings.update(overrides)
    b = broker_factory(overrides=settings)
    out = b.ctl("plugins", "load", "emqx_auth_http").stdout
    assert out == "Plugin emqx_auth_http loaded successfully.\n", out
    return b


def connack(broker, client_id=None, username=None, password=None, version=5, timeout_s=5):
    with RawClient(broker.port, version=version) as c:
        ack = c.connect(client_id or unique_id("http"), username=username, password=password, timeout_s=timeout_s)
        return ack["rc"]


def password_check(req):
    return (200, "ok") if req["params"].get("password") == "good" else (401, "no")


def test_status_codes_decide_and_params_are_url_encoded(broker_factory, server):
    server.answers["/auth"] = password_check
    b = http_broker(broker_factory, server, **{"auth.http.auth_req.method": "get"})
    user, cid = "a b&c=d/é%+?#", "id,with=odd&chars"
    assert connack(b, client_id=cid, username=user, password="good") == 0
    req = server.of("/auth")[-1]
    assert req["method"] == "GET"
    assert req["params"] == {"clientid": cid, "username": user, "password": "good"}
    # Nothing splits a value: & = + # and space arrive encoded.
    assert "&c=d" not in req["query"] and " " not in req["query"] and "#" not in req["query"]
    assert connack(b, username=user, password="bad") == BAD_PASSWORD_V5
    # 403 -> not authorized; 500 and `ignore` -> not this backend's (anonymous allowed).
    for status, body, expected in [(403, "", NOT_AUTHORIZED_V5), (500, "", 0), (200, "ignore", 0), (302, "", 0)]:
        server.answers["/auth"] = lambda r, s=status, t=body: (s, t)
        assert connack(b, username="x", password="y") == expected, (status, body)
    # The password never reaches the log.
    assert "good" not in b.log_tail().replace("goodbye", "")


def test_post_bodies_form_and_json_with_headers(broker_factory, server):
    server.answers["/auth"] = lambda r: (200, "ok") if r["params"].get("p", r["params"].get("password")) == "good" else (401, "")
    b = http_broker(
        broker_factory,
        server,
        **{
            "auth.http.auth_req.params": "u=%u,c=%c,p=%P,ip=%a,proto=%r",
            "auth.http.auth_req.headers.X-Api-Key": "k1",
        },
    )
    assert connack(b, client_id="c1", username="it's me", password="good") == 0
    req = server.of("/auth")[-1]
    assert req["method"] == "POST"
    assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert req["headers"]["x-api-key"] == "k1"
    assert req["params"] == {"u": "it's me", "c": "c1", "p": "good", "ip": "127.0.0.1", "proto": "5"}
    assert req["query"] == ""

    b2 = http_broker(broker_factory, server, **{"auth.http.auth_req.content_type": "json"})
    assert connack(b2, client_id="c2", username='{"x": 1}', password="good") == 0
    req = server.of("/auth")[-1]
    assert req["headers"]["content-type"] == "application/json"
    assert json.loads(req["body"]) == {"clientid": "c2", "username": '{"x": 1}', "password": "good"}


def test_a_slow_or_absent_server_is_ignored_within_the_timeout(broker_factory, server):
    server.answers["/auth"] = lambda r: (200, "ok", 3)
    b = http_broker(broker_factory, server, allow_anonymous="false")
    # Two clients wait at once, neither waits for the other: both time out in ~1s.
    results = []

    def one():
        t0 = time.monotonic()
        results.append((connack(b, username="slow", password="x"), time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [rc for rc, _ in results] == [NOT_AUTHORIZED_V5] * 2, results
    assert all(0.8 < took < 2.5 for _, took in results), results

    # Nobody listening (connection refused, retried): ignored within the timeout too.
    dead = broker_factory(
        overrides={
            "auth.http.auth_req": "http://127.0.0.1:9/auth",
            "auth.http.super_req": "",
            "auth.http.acl_req": "",
            "auth.http.request.timeout": "1s",
        }
    )
    assert dead.ctl("plugins", "load", "emqx_auth_http").returncode == 0
    t0 = time.monotonic()
    assert connack(dead, username="u", password="p") == 0
    assert time.monotonic() - t0 < 2.5
    assert connack(dead, username="u", password="p") == 0
    # One log line for both failures (at most one per 10 s).
    assert dead.log_tail().count("HTTP auth service unavailable") == 1


def test_superuser_skips_acl_and_acl_req_denies_a_topic(broker_factory, server):
    server.answers["/auth"] = lambda r: (200, "ok")
    server.answers["/superuser"] = lambda r: (200, "") if r["params"]["username"] == "admin" else (403, "")
    server.answers["/acl"] = lambda r: (403, "") if r["params"]["topic"].startswith("secret/") else (200, "")
    b = http_broker(broker_factory, server)
    with RawClient(b.port, version=5) as admin:
        assert admin.connect(unique_id("adm"), username="admin", password="x")["rc"] == 0
        acl_before = len(server.of("/acl"))
        assert admin.subscribe(1, [("secret/#", 1)]) == [1]
        assert len(server.of("/acl")) == acl_before  # never asked for a superuser
    with RawClient(b.port, version=5) as user:
        cid = unique_id("usr")
        assert user.connect(cid, username="bob", password="x")["rc"] == 0
        assert user.subscribe(1, [("secret/#", 1), ("open/#", 1)]) == [0x87, 1]
        asked = {r["params"]["topic"]: r["params"] for r in server.of("/acl")}
        assert asked["secret/#"]["access"] == "1" and asked["secret/#"]["clientid"] == cid
        user.send(publish("secret/x", b"no", qos=1, pid=7, version=5))
        ack = user.recv_type(PUBACK)
        assert ack.body[:2] == b"\x00\x07" and ack.body[2] == 0x87
        assert server.of("/acl")[-1]["params"]["access"] == "2"


def test_unload_while_a_request_is_pending(broker_factory, server):
    started = threading.Event()

    def slow(req):
        started.set()
        return (200, "ok", 2)

    server.answers["/auth"] = slow
    b = http_broker(broker_factory, server, **{"auth.http.request.timeout": "5s"})
    out = {}

    def waiting_client():
        out["rc"] = connack(b, username="u", password="p", timeout_s=10)

    t = threading.Thread(target=waiting_client)
    t.start()
    assert started.wait(5)
    assert b.ctl("plugins", "unload", "emqx_auth_http").stdout.endswith("successfully.\n")
    # Unloaded: new clients are not asked, and the broker serves them at once.
    t0 = time.monotonic()
    assert connack(b, username="u", password="p") == 0
    assert time.monotonic() - t0 < 1
    t.join(10)
    assert out.get("rc") == 0  # the pending answer still arrives (allow)
    assert len(server.of("/auth")) == 1


def test_started_at_boot_from_a_prewritten_loaded_plugins_file(broker_factory, server):
    server.answers["/auth"] = password_check
    b = broker_factory(
        start=False,
        overrides={
            "auth.http.auth_req": server.url("/auth"),
            "auth.http.super_req": "",
            "auth.http.acl_req": "",
            "allow_anonymous": "false",
        },
    )
    b.data_dir.mkdir(parents=True)
    (b.data_dir / "loaded_plugins").write_text("{emqx_auth_http, true}.\n")
    b.start()
    assert connack(b, username="u", password="good") == 0
    assert connack(b, username="u", password="bad") == BAD_PASSWORD_V5
    assert server.of("/superuser") == [] and server.of("/acl") == []
