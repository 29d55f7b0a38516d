"""The guard both web servers share, tested the same way against each (`pixcade serve` and
`pixcade drawbench rate`): what another site's page can make a browser send is refused and
changes nothing, every response carries the anti-framing and anti-sniffing headers, bad
JSON is a 400 with a reason (not a dropped connection), and per-client limits hold while
cross-site requests can't use them up.
"""

from __future__ import annotations

import http.client
import json
import select
import time

import pytest
from web_targets import KINDS, live_target

from pixcade.errors import PixcadeError
from pixcade.eval import drawbench_server
from pixcade.web.limits import WebLimits, allowed_hosts

EVIL = "https://evil.example"


@pytest.fixture(params=KINDS)
def target(request, tmp_path):
    with live_target(request.param, tmp_path) as t:
        yield t


def test_foreign_host_names_are_refused_and_change_nothing(target) -> None:
    before = target.state()
    evil = {"Host": f"evil.example:{target.port}"}  # DNS rebinding: the page believes it is evil.example
    for method, path, body in (("GET", "/", None), ("GET", target.json_get, None),
                               ("POST", target.change, target.change_body)):
        status, _, raw = target.call(method, path, body, evil)
        assert (status, raw) == (400, b"Invalid host header"), (method, path)
    assert target.state() == before
    for host in (f"localhost:{target.port}", f"127.0.0.1:{target.port}", f"[::1]:{target.port}", "localhost"):
        assert target.call("GET", "/", headers={"Host": host})[0] == 200, host


def test_cross_origin_state_changes_are_refused_and_change_nothing(target) -> None:
    before = target.state()
    for origin in (EVIL, "null", f"http://localhost:{target.port + 1}", f"http://127.0.0.1:{target.port}.evil.example"):
        status, _, raw = target.call("POST", target.change, target.change_body, {"Origin": origin})
        assert status == 403 and "cross-origin POST" in json.loads(raw)["error"], origin
    assert target.state() == before
    same = target.change_request({"Origin": f"http://127.0.0.1:{target.port}"})
    assert same in (200, 202) and target.state() != before


def test_requests_another_sites_page_makes_are_refused_but_links_to_the_page_work(target) -> None:
    before = target.state()
    # What <img>, <script> or fetch() on another site sends (browsers mark it; no Origin on a GET).
    for site in ("cross-site", "same-site"):
        for method, path, dest, mode in (("GET", target.json_get, "empty", "cors"), ("GET", "/", "image", "no-cors"),
                                         ("GET", target.page_asset, "script", "no-cors"),
                                         ("POST", target.change, "empty", "no-cors")):
            status, _, raw = target.call(method, path, target.change_body if method == "POST" else None,
                                         {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest})
            assert status == 403 and site in json.loads(raw)["error"], (site, method, path)
    assert target.state() == before
    # A link on another site to the page is a top-level navigation: allowed.
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert target.call("GET", "/", headers=nav)[0] == 200
    assert target.call("GET", "/", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_every_response_forbids_framing_and_sniffing(target) -> None:
    responses = {
        "page": target.call("GET", "/"),
        "static": target.call("GET", target.page_asset),
        "json": target.call("GET", target.json_get),
        "not found": target.call("GET", "/no/such/path"),
        "wrong method": target.call("DELETE", "/"),
        "static wrong method": target.call("POST", target.page_asset, b""),
        "cross-origin": target.call("POST", target.change, target.change_body, {"Origin": EVIL}),
        "foreign host": target.call("GET", "/", headers={"Host": "evil.example"}),
    }
    for what, (status, headers, _) in responses.items():
        csp = [d.strip() for d in headers.get("content-security-policy", "").split(";")]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (what, status, headers)
        assert headers["x-content-type-options"] == "nosniff", what
        assert headers["cross-origin-resource-policy"] == "same-origin", what
    assert responses["page"][0] == responses["static"][0] == 200
    assert responses["page"][1]["cache-control"] == responses["static"][1]["cache-control"] == "no-cache"
    assert responses["not found"][0] == 404 and json.loads(responses["not found"][2])["error"]
    status, _, raw = responses["static wrong method"]
    assert status == 405 and "method POST not allowed" in json.loads(raw)["error"]


@pytest.mark.parametrize("body, words", [
    pytest.param(b"[" * 2000 + b"]" * 2000, "nested deeper than 32", id="deep-arrays"),
    pytest.param(b'{"a":' * 600 + b"1" + b"}" * 600, "nested deeper than 32", id="deep-objects"),
    pytest.param(b'{"token": ' + b"9" * 4000 + b"}", "number of 4000 characters", id="huge-int"),
    pytest.param(b'{"token": 1e999}', "out of range", id="huge-float"),
    pytest.param(b'{"token": NaN}', "NaN is not a JSON number", id="nan"),
    pytest.param(b'{"token": -Infinity}', "-Infinity is not a JSON number", id="infinity"),
])
def test_hostile_json_is_a_400_with_the_reason(target, body, words) -> None:
    before = target.state()
    conn = http.client.HTTPConnection(target.host, target.port, timeout=30)
    try:  # one keep-alive connection: refused twice, never dropped (was: a traceback and a reset)
        for _ in range(2):
            conn.request("POST", target.json_route, body=body, headers={"Content-Type": "application/json"})
            res = conn.getresponse()
            data = json.loads(res.read())
            assert res.status == 400 and words in data["error"], data
            assert res.getheader("Connection") != "close"
    finally:
        conn.close()
    assert target.state() == before
    assert target.call("GET", "/")[0] == 200


def test_per_client_request_limit_is_not_spent_by_cross_site_requests(tmp_path) -> None:
    for kind in KINDS:
        with live_target(kind, tmp_path / kind, WebLimits(max_client_requests=2)) as target:
            head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 50\r\n%s\r\n")
            # Cross-site pages start many slow requests: each is refused at once, holding nothing.
            evil = [target.connect() for _ in range(4)]
            for sock in evil:
                sock.sendall(head % (target.json_route.encode(), b"Origin: " + EVIL.encode() + b"\r\n") + b"{")
                assert sock.recv(65536).startswith(b"HTTP/1.1 403")
            assert target.call("GET", "/", source="127.0.0.3")[0] == 200
            # Two of this client's own requests in progress (bodies still arriving) fill its limit.
            slow = [target.connect() for _ in range(2)]
            for sock in slow:
                sock.sendall(head % (target.json_route.encode(), b"") + b"{")
            time.sleep(1.0)
            assert not select.select(slow, [], [], 0)[0], "a slow request was answered: not in progress"
            status, headers, raw = target.call("GET", target.json_get)
            assert status == 429 and json.loads(raw)["limit"] == "max_client_requests" and headers["retry-after"]
            assert target.call("GET", "/", headers={"X-Forwarded-For": "10.1.2.3"})[0] == 429  # no posing as another
            assert target.call("GET", "/", source="127.0.0.2")[0] == 200  # another client is not limited
            for sock in slow + evil:
                sock.close()
            deadline = time.monotonic() + 10
            while target.call("GET", "/")[0] != 200:
                assert time.monotonic() < deadline, "the limit was not released"
                time.sleep(0.05)


def test_per_client_connection_limit(tmp_path) -> None:
    for kind in KINDS:
        with live_target(kind, tmp_path / kind, WebLimits(max_client_connections=3)) as target:
            held = [target.connect() for _ in range(3)]
            for sock in held:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive: still open
            extra = target.connect()
            extra.settimeout(10)
            try:
                extra.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert extra.recv(65536) == b""  # closed without an answer
            except ConnectionResetError:
                pass
            extra.close()
            assert target.call("GET", "/", source="127.0.0.2")[0] == 200
            for sock in held:
                sock.close()
            deadline = time.monotonic() + 10
            while True:
                try:
                    if target.call("GET", "/")[0] == 200:
                        break
                except (ConnectionError, OSError):
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_a_flood_cannot_expire_a_raters_open_comparison(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(drawbench_server, "MAX_OPEN", 20)
    with live_target("drawbench", tmp_path) as target:
        status, _, raw = target.call("POST", "/api/next", b"")
        token = json.loads(raw)["token"]
        # Another site's page: <img src=http://127.0.0.1:PORT/api/next> in a loop, with and
        # without fetch metadata (older browsers), and cross-origin POSTs.
        for k in range(60):
            assert target.call("GET", "/api/next", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image",
                                                             "Sec-Fetch-Mode": "no-cors"})[0] == 403
            assert target.call("GET", "/api/next")[0] == 405
            assert target.call("POST", "/api/next", b"", {"Origin": EVIL})[0] == 403
        # Another rater (another address) asking for many comparisons expires only its own.
        for k in range(60):
            assert target.call("POST", "/api/next", b"", source="127.0.0.2")[0] == 200
        assert len(target.server.session._open) == drawbench_server.MAX_OPEN
        vote = json.dumps({"token": token, "fidelity": "A", "quality": "B"}).encode()
        status, _, raw = target.call("POST", "/api/vote", vote)
        assert status == 200 and json.loads(raw)["ok"]


def test_allowed_hosts() -> None:
    loopback = ["localhost", "*.localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("127.0.0.1") == loopback
    assert allowed_hosts("0.0.0.0", ["pixcade.lan", "*.example.org"]) == loopback + ["pixcade.lan", "*.example.org"]
    assert allowed_hosts("192.168.1.5") == loopback + ["192.168.1.5"]
    assert allowed_hosts("::") == loopback and allowed_hosts("fe80::1") == loopback + ["[fe80::1]"]
    assert allowed_hosts("127.0.0.1", ["::1", "[fe80::2]"])[-1] == "[fe80::2]"
    for bad in ("evil.*", "a/b", "*x.org", ""):
        with pytest.raises(PixcadeError, match="--allow-host"):
            allowed_hosts("0.0.0.0", [bad])
