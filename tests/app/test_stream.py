"""The /landmarks/stream WebSocket: tracking over frames, options, keys, bad frames, slow clients, disconnects,
idle streams and the drain."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from starlette.websockets import WebSocketDisconnect

from app.middleware import RedactQuery
from model.artifacts import SHIPPED_CHECKPOINT
from tests.app.conftest import open_client

ASTRONAUT = (Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg").read_bytes()
ROUTE = "/landmarks/stream"


def closed_with(ws, code: int) -> dict:
    """Read until the server closes; the error message before the close (if any)."""
    last: dict = {}
    seen = None
    while seen is None:
        try:
            last = ws.receive_json()
        except WebSocketDisconnect as closed:
            seen = closed.code
    assert seen == code
    return last


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_frames_are_tracked_with_one_id_and_the_detector_runs_every_n_frames():
    with open_client(SHIPPED_CHECKPOINT) as client, client.websocket_connect(f"{ROUTE}?detect_every=3") as ws:
        answers = []
        for _ in range(5):
            ws.send_bytes(ASTRONAUT)
            answers.append(ws.receive_json())
    assert [a["sequence"] for a in answers] == [0, 1, 2, 3, 4]
    assert [a["detected"] for a in answers] == [True, False, False, True, False]
    assert all(a["dropped"] == 0 for a in answers)
    assert [[f["track_id"] for f in a["faces"]] for a in answers] == [[1]] * 5
    face = answers[-1]["faces"][0]
    assert len(face["landmarks"]) == 68
    assert len(face["confidence"]) == 68
    assert face["score"] > 0.5
    assert face["pose"] is not None
    # A still face stays still: the points of the same photo agree across frames within a pixel.
    first, last = answers[0]["faces"][0]["landmarks"], face["landmarks"]
    assert max(abs(a - b) for p, q in zip(first, last, strict=True) for a, b in zip(p, q, strict=True)) < 1.0


def test_options_come_as_query_parameters_or_a_first_message(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint) as client:
        with client.websocket_connect(f"{ROUTE}?smoothing=off&max_faces=2") as ws:
            ws.send_text('{"detect_every": 1, "beta": 3}')
            for i in range(2):
                ws.send_bytes(ASTRONAUT)
                answer = ws.receive_json()
                assert answer["sequence"] == i
                assert answer["detected"] is True
        with client.websocket_connect(f"{ROUTE}?detect_every=0") as ws:
            assert "detect_every" in closed_with(ws, 1008)["detail"]
        with client.websocket_connect(ROUTE) as ws:
            ws.send_text('{"colour": "blue"}')
            assert closed_with(ws, 1008)["error"] == "invalid_options"
        with client.websocket_connect(ROUTE) as ws:
            ws.send_text("not json")
            assert closed_with(ws, 1008)["error"] == "invalid_message"


def test_a_bad_or_oversized_frame_gets_an_error_and_the_stream_goes_on(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint, max_upload_bytes=len(ASTRONAUT) + 10) as client:
        with client.websocket_connect(ROUTE) as ws:
            ws.send_bytes(b"not an image")
            assert ws.receive_json() == {
                "error": "unsupported_media_type", "detail": "the bytes are not a JPEG, PNG, WebP or BMP image",
                "sequence": 0,
            }  # fmt: skip
            ws.send_bytes(ASTRONAUT + b"\0" * 100)
            error = ws.receive_json()
            assert error["error"] == "payload_too_large"
            assert error["sequence"] == 1
            ws.send_text('{"late": "options"}')
            assert ws.receive_json()["error"] == "invalid_message"
            ws.send_bytes(ASTRONAUT)
            answer = ws.receive_json()
            assert answer["sequence"] == 2
            assert "faces" in answer
        metrics = client.get("/metrics").text
        assert 'landmarks_rejected_requests_total{reason="payload_too_large"} 1.0' in metrics
        assert 'landmarks_stream_frames_total{outcome="answered"} 1.0' in metrics
        assert 'landmarks_request_duration_seconds_count{route="/landmarks/stream",status_class="4xx"} 1.0' in metrics


def test_keys_come_from_a_header_the_subprotocol_or_the_first_message_never_the_url(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint, api_keys="s3cret") as client:
        with client.websocket_connect(ROUTE) as ws:
            ws.send_bytes(ASTRONAUT)
            assert closed_with(ws, 1008)["error"] == "unauthorized"
        with client.websocket_connect(ROUTE, headers={"X-API-Key": "wrong"}) as ws:
            ws.send_bytes(ASTRONAUT)
            assert closed_with(ws, 1008)["detail"] == "the API key is not valid"
        with client.websocket_connect(f"{ROUTE}?api_key=s3cret") as ws:
            assert "never in the URL" in closed_with(ws, 1008)["detail"]
        with client.websocket_connect(ROUTE, headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send_bytes(ASTRONAUT)
            assert ws.receive_json()["sequence"] == 0
        with client.websocket_connect(ROUTE, subprotocols=["landmarks.v1", "key.s3cret"]) as ws:
            assert ws.accepted_subprotocol == "landmarks.v1"  # the key is never echoed
            ws.send_bytes(ASTRONAUT)
            assert ws.receive_json()["sequence"] == 0
        with client.websocket_connect(ROUTE) as ws:
            ws.send_text('{"api_key": "s3cret", "detect_every": 2}')
            ws.send_bytes(ASTRONAUT)
            assert ws.receive_json()["sequence"] == 0


def test_a_slow_client_has_frames_dropped_oldest_first_and_counted(tiny_checkpoint: Path):
    sent = 12
    with open_client(tiny_checkpoint, stream_buffer=1) as client, client.websocket_connect(ROUTE) as ws:
        for _ in range(sent):
            ws.send_bytes(ASTRONAUT)
        answers = [ws.receive_json()]
        while answers[-1]["sequence"] != sent - 1:  # the newest frame is always answered
            answers.append(ws.receive_json())
    sequences = [a["sequence"] for a in answers]
    assert sequences == sorted(sequences)
    assert len(answers) + sum(a["dropped"] for a in answers) == sent
    assert len(answers) < sent


def test_a_client_that_leaves_mid_frame_costs_nothing_and_the_next_one_is_served(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint) as client:
        with client.websocket_connect(ROUTE) as ws:
            ws.send_bytes(ASTRONAUT)
            ws.close()
        with client.websocket_connect(ROUTE) as ws:
            ws.send_bytes(ASTRONAUT)
            assert ws.receive_json()["sequence"] == 0
        deadline = time.monotonic() + 5
        while "landmarks_streams 0.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the stream gauge never returned to 0"
            time.sleep(0.05)


def test_idle_streams_time_out_and_a_full_server_refuses_with_1013(tiny_checkpoint: Path):
    settings = {"stream_idle_timeout_s": 1.0, "max_streams": 1}
    with open_client(tiny_checkpoint, **settings) as client, client.websocket_connect(ROUTE) as ws:
        ws.send_bytes(ASTRONAUT)
        ws.receive_json()
        with client.websocket_connect(ROUTE) as second:
            assert closed_with(second, 1013)["error"] == "too_many_streams"
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1000


def test_rate_limits_apply_per_frame(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint, rate_limit=0.01, rate_burst=1) as client, client.websocket_connect(ROUTE) as ws:
        ws.send_bytes(ASTRONAUT)
        ws.send_bytes(ASTRONAUT)
        replies = [ws.receive_json(), ws.receive_json()]
    assert {r.get("error") for r in replies} == {None, "rate_limited"}


def test_a_drain_closes_streams_with_1001(tiny_checkpoint: Path):
    with open_client(tiny_checkpoint) as client, client.websocket_connect(ROUTE) as ws:
        ws.send_bytes(ASTRONAUT)
        assert ws.receive_json()["sequence"] == 0
        service = client.app.state.service  # type: ignore[attr-defined]
        client.portal.call(service.begin_drain)  # type: ignore[union-attr]
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1001
        with client.websocket_connect(ROUTE) as late:
            assert closed_with(late, 1013)["error"] == "draining"


def test_query_strings_never_reach_the_server_log():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/landmarks?api_key=s3cret", "1.1", 401), None,
    )  # fmt: skip
    assert RedactQuery().filter(record)
    assert "s3cret" not in record.getMessage()
    assert "/landmarks?[redacted]" in record.getMessage()
    from app.main import create_app  # installs the filter on uvicorn's loggers
    from tests.app.conftest import make_settings

    create_app(make_settings(SHIPPED_CHECKPOINT), handle_signals=False)
    assert any(isinstance(f, RedactQuery) for f in logging.getLogger("uvicorn.error").filters)


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_the_readmes_python_client_runs_against_a_live_server(tmp_path, capsys):
    import re

    from tests.support.server import ROOT, running_server

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import json\n\nfrom websockets.*?)```", text, re.S)
    assert block is not None, "README has no streaming client example"
    with running_server(SHIPPED_CHECKPOINT, tmp_path / "server.log") as (base, _):
        code = block.group(1).replace("ws://localhost:8000", base.replace("http://", "ws://"))
        code = code.replace('"tests/data/astronaut.jpg"', repr(str(ROOT / "tests" / "data" / "astronaut.jpg")))
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in printed] == [["0", "1"], ["1", "1"], ["2", "1"]]  # sequence, track id


def test_no_frame_ever_gets_an_internal_error(tiny_checkpoint: Path):
    """Truncated, corrupted and random frames: each gets an answer or a client error, never internal_error."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = [ASTRONAUT[: len(ASTRONAUT) // k] for k in (2, 3, 10)] + [b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBP", b"BM"]
    for _ in range(6):
        corrupt = bytearray(ASTRONAUT)
        for i in rng.integers(100, len(corrupt), 40):
            corrupt[int(i)] = int(rng.integers(0, 256))
        frames.append(bytes(corrupt))
    frames.append(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with open_client(tiny_checkpoint) as client, client.websocket_connect(ROUTE) as ws:
        replies = []
        for frame in frames:
            ws.send_bytes(frame)
            replies.append(ws.receive_json())
        ws.send_bytes(ASTRONAUT)
        last = ws.receive_json()
    assert [r["sequence"] for r in replies] == list(range(len(frames)))
    assert all(r.get("error") != "internal_error" for r in replies), replies
    assert {r.get("error") for r in replies} - {None} <= {"unsupported_media_type", "validation_error"}
    assert "faces" in last
