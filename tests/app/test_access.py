"""Who may call the service: API keys, rate limits, the metrics port and CORS (app/access.py, app/main.py)."""

import json
import logging
import socket
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.access import KeyFileError, KeyRing, RateLimiter, key_id, parse_keys
from app.startup import startup_problem
from tests.app.conftest import make_settings, open_client
from tests.app.test_api import BOX, assert_error

KEY = "k3y-ab12-secret"
OTHER = "second-key"
PROTECTED = [("post", "/landmarks"), ("post", "/landmarks/render"), ("get", "/v1/model"), ("get", "/metrics")]


def call(client, method: str, path: str, face: bytes, headers: dict[str, str] | None = None):
    if method == "post":
        form = {"boxes": json.dumps([BOX])}
        return client.post(path, files={"image": ("f.png", face)}, data=form, headers=headers or {})
    return client.get(path, headers=headers or {})


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint):
    with open_client(tiny_checkpoint, api_keys=f" {KEY} ,{OTHER}") as client:
        yield client


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_health_needs_a_key(keyed, face_png, method, path):
    missing = call(keyed, method, path, face_png[0])
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_error(call(keyed, method, path, face_png[0], {"Authorization": "Bearer nope"}), 401, "unauthorized")
    assert_error(call(keyed, method, path, face_png[0], {"Authorization": f"Basic {KEY}"}), 401, "unauthorized")
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": OTHER}, {"authorization": f"bearer  {KEY} "}):
        assert call(keyed, method, path, face_png[0], headers).status_code == 200, headers


def test_health_and_static_pages_stay_open(keyed):
    for path in ("/health/live", "/health/ready", "/", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    schema = keyed.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}  # /docs has Authorize
    assert_error(keyed.get("/nope"), 401, "unauthorized")  # unknown paths do not reveal what exists


def test_keys_never_appear_in_logs_or_bodies(tiny_checkpoint, face_png, caplog):
    with caplog.at_level(logging.INFO), open_client(tiny_checkpoint, api_keys=KEY) as client:
        ok = call(client, "post", "/landmarks", face_png[0], {"Authorization": f"Bearer {KEY}"})
        bad = call(client, "post", "/landmarks", face_png[0], {"X-API-Key": KEY + "x"})
        card = client.get("/v1/model", headers={"X-API-Key": KEY}).text
    assert ok.status_code == 200
    assert KEY not in bad.text
    assert KEY not in card
    assert KEY not in caplog.text
    assert f'"caller": "key:{key_id(KEY)}"' in caplog.text  # the access log names the caller by its id
    assert "**********" in caplog.text  # the settings line masks the keys


def test_key_file_with_comments_and_whitespace(tmp_path, tiny_checkpoint, face_png):
    path = tmp_path / "keys.txt"
    path.write_text(f"# rotated 2026-11\n  {KEY}  \n\n{OTHER}\n")
    assert parse_keys(f"@{path}") == {KEY, OTHER}
    with open_client(tiny_checkpoint, api_keys=f"@{path}") as client:
        assert call(client, "get", "/v1/model", face_png[0], {"X-API-Key": OTHER}).status_code == 200
        assert call(client, "get", "/v1/model", face_png[0], {"X-API-Key": "# rotated 2026-11"}).status_code == 401
    with pytest.raises(KeyFileError, match="cannot be read"):
        parse_keys(f"@{tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(KeyFileError, match="holds no key"):
        parse_keys(f"@{tmp_path / 'empty'}")
    problem = startup_problem(make_settings(tiny_checkpoint, api_keys=f"@{tmp_path / 'missing'}"))
    assert problem is not None
    assert problem.startswith("LANDMARKS_API_KEYS: API key file")  # one line, before the server starts
    assert "\n" not in problem


def test_keyring_matches_only_exact_keys():
    ring = KeyRing(frozenset({KEY, OTHER}))
    assert ring.match(KEY) == key_id(KEY)
    assert ring.match(OTHER) == key_id(OTHER)
    for wrong in ("", KEY[:-1], KEY + " ", KEY.upper(), "é" * 10_000, "\udcff"):
        assert ring.match(wrong) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["authorization", "x-api-key", "x-request-id", "origin"]),
    value=st.one_of(st.text(max_size=200), st.binary(max_size=5000).map(lambda b: b.decode("latin-1"))),
)
def test_fuzzed_auth_headers_never_give_500(keyed, name, value):
    raw = "".join(c for c in value if c not in "\r\n\x00").encode("utf-8")  # UTF-8 bytes on the wire, any length
    response = keyed.get("/v1/model", headers={name: raw})
    assert response.status_code in (200, 401), response.text
    assert set(response.json()) <= {"error", "detail"} or response.status_code == 200


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token takes half a second at 2/s
    assert limiter.take("b") == 0  # callers do not share a bucket
    now[0] = 0.5
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0


def test_a_burst_over_the_limit_gets_429_with_retry_after_and_nothing_else_is_lost(tiny_checkpoint, face_png):
    with open_client(tiny_checkpoint, api_keys=f"{KEY},{OTHER}", rate_limit=0.5, rate_burst=3) as client:
        mine = [call(client, "post", "/landmarks", face_png[0], {"X-API-Key": KEY}) for _ in range(6)]
        theirs = call(client, "post", "/landmarks", face_png[0], {"X-API-Key": OTHER})
        metrics = client.get("/metrics", headers={"X-API-Key": OTHER}).text
        health = client.get("/health/ready")
    assert [r.status_code for r in mine] == [200, 200, 200, 429, 429, 429]
    for refused in mine[3:]:
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
    assert all(len(r.json()["faces"]) == 1 for r in mine[:3])  # the admitted ones were answered in full
    assert theirs.status_code == 200  # another key has its own bucket
    assert health.status_code == 200  # health is never limited
    assert 'landmarks_rejected_requests_total{reason="rate_limited"} 3.0' in metrics


def test_rate_limit_per_client_address_without_keys(tiny_checkpoint):
    with open_client(tiny_checkpoint, rate_limit=1, rate_burst=1) as client:
        statuses = [client.get("/v1/model").status_code for _ in range(3)]
    assert statuses == [200, 429, 429]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_on_their_own_port_and_not_on_the_public_one(tiny_checkpoint, face_png):
    port = free_port()
    with open_client(tiny_checkpoint, metrics_port=port, metrics_host="127.0.0.1") as client:
        assert call(client, "post", "/landmarks", face_png[0]).status_code == 200
        assert_error(client.get("/metrics"), 404, "not_found")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    assert 'landmarks_request_duration_seconds_count{route="/landmarks",status_class="2xx"} 1.0' in text
    with pytest.raises(OSError, match="refused"):  # stopped with the app
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_cors_preflight_and_headers_on_answers_and_refusals(tiny_checkpoint, face_png):
    origin = "https://app.example"
    with open_client(tiny_checkpoint, cors_origins=f"{origin}, https://other.example", api_keys=KEY) as client:
        preflight = client.options(
            "/landmarks",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        refused = call(client, "post", "/landmarks", face_png[0], {"Origin": origin})
        served = call(client, "post", "/landmarks", face_png[0], {"Origin": origin, "X-API-Key": KEY})
        stranger = call(client, "post", "/landmarks", face_png[0], {"Origin": "https://evil.example", "X-API-Key": KEY})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin  # the browser app can read the 401
    assert served.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in stranger.headers


def test_without_settings_nothing_changes(client, face_png):
    assert call(client, "post", "/landmarks", face_png[0]).status_code == 200
    assert client.get("/metrics").status_code == 200
    preflight = client.options(
        "/landmarks", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
