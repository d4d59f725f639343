import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.service import load_service
from tests.app.conftest import make_settings, open_client, png_bytes, wait_ready
from tests.conftest import draw_face
from tests.support.stand_in import stand_in_parts

BOX = [60.0, 60.0, 200.0, 200.0]


def post(client, image: bytes, **fields: str):
    return client.post("/landmarks", files={"image": ("face.png", image, "image/png")}, data=fields)


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]


def test_health_model_card_and_metrics(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").status_code == 200
    card = client.get("/v1/model").json()
    assert card["version"] == "tiny-test"
    assert card["input_size"] == 64
    assert card["num_landmarks"] == 68
    assert "research" in card["licence"]
    text = client.get("/metrics").text
    for name in (
        "landmarks_request_duration_seconds_bucket",
        "landmarks_batch_size_bucket",
        "landmarks_queue_depth",
        "landmarks_model_info",
        "landmarks_in_flight_requests",
        "landmarks_inference_seconds_bucket",
    ):
        assert name in text


def test_landmarks_with_caller_boxes(client, face_png):
    data, _ = face_png
    # one pass: the untrained model's landmarks fit no box, so by default the boxes would be re-framed
    response = post(client, data, boxes=json.dumps([BOX, [10, 20, 100, 120]]), passes="1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 256, "height": 256}
    assert len(body["faces"]) == 2
    face = body["faces"][0]
    assert face["box"] == BOX
    assert face["detection_score"] is None
    assert np.array(face["landmarks"]).shape == (68, 2)
    conf = np.array(face["confidence"])
    assert conf.shape == (68,)
    assert ((conf >= 0) & (conf <= 1)).all()
    assert face["score"] == pytest.approx(conf.mean(), abs=1e-3)
    # Points stay inside the crop window around the box (the network is untrained here).
    pts = np.array(face["landmarks"])
    assert (pts > 60 - 0.63 * 140).all()
    assert (pts < 200 + 0.63 * 140).all()
    assert body["model"]["version"] == "tiny-test"
    assert {"decode", "crop", "queue_wait", "inference", "total"} <= set(body["timings_ms"])
    assert response.headers["x-request-id"]


def test_detector_path_answers_with_a_list(client):
    blank = np.full((120, 160, 3), 128, np.uint8)
    response = post(client, png_bytes(blank))
    assert response.status_code == 200
    assert response.json()["faces"] == []


def test_request_id_is_echoed(client, face_png):
    response = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"boxes": "not json"}, "invalid_boxes"),
        ({"boxes": "[[1, 2, 3]]"}, "invalid_boxes"),
        ({"boxes": '{"a": 1}'}, "invalid_boxes"),
        ({"boxes": "[[NaN, 1, 50, 50]]"}, "invalid_boxes"),
        ({"boxes": '[[1, 2, "3", 4]]'}, "invalid_boxes"),
        ({"boxes": "[[50, 50, 10, 10]]"}, "invalid_boxes"),
        ({"boxes": "[[1000, 1000, 1100, 1100]]"}, "invalid_boxes"),
        ({"max_faces": "abc"}, "invalid_max_faces"),
        ({"max_faces": "0"}, "invalid_max_faces"),
        ({"max_faces": "1000"}, "invalid_max_faces"),
        ({"max_faces": "1", "boxes": json.dumps([BOX, BOX])}, "invalid_boxes"),
        ({"passes": "two"}, "invalid_passes"),
        ({"passes": "0"}, "invalid_passes"),
        ({"passes": "4"}, "invalid_passes"),
    ],
)
def test_malformed_fields_are_400(client, face_png, fields, code):
    assert_error(post(client, face_png[0], **fields), 400, code)


def test_missing_image_is_422(client):
    assert_error(client.post("/landmarks", data={"boxes": "[]"}), 422, "validation_error")
    assert_error(
        client.post("/landmarks", content=b"{}", headers={"content-type": "application/json"}), 422, "validation_error"
    )


@pytest.mark.parametrize(
    "payload", [b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a" + b"\x00" * 30]
)
def test_undecodable_bytes_are_415(client, payload):
    assert_error(post(client, payload), 415, "unsupported_media_type")


def test_gif_is_415_whatever_its_name(client):
    gif = png_bytes(np.zeros((20, 20, 3), np.uint8), "GIF")
    assert_error(client.post("/landmarks", files={"image": ("x.png", gif, "image/png")}), 415, "unsupported_media_type")


def test_formats_are_recognised_from_bytes(client):
    image, _ = draw_face(96, seed=2)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        data = png_bytes(image, fmt)
        response = client.post(
            "/landmarks", files={"image": ("wrong-name.txt", data, "text/plain")}, data={"boxes": "[[20, 20, 70, 70]]"}
        )
        assert response.status_code == 200, (fmt, response.text)


def test_exif_orientation_is_applied(client):
    image = np.zeros((40, 100, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = png_bytes(image, "JPEG", exif=exif)
    body = post(client, data, boxes="[[5, 5, 30, 60]]").json()
    assert body["image"] == {"width": 40, "height": 100}


def test_upload_limit_is_413_with_and_without_content_length(tiny_checkpoint):
    with open_client(tiny_checkpoint, max_upload_bytes=4096) as client:
        big = b"\xff" * 10_000
        assert_error(post(client, big), 413, "payload_too_large")

        def chunks():
            for _ in range(10):
                yield b"-" * 1000

        response = client.post(
            "/landmarks", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert_error(response, 413, "payload_too_large")


def test_pixel_limit_is_422_from_the_header(tiny_checkpoint):
    with open_client(tiny_checkpoint, max_image_pixels=100 * 100) as client:
        data = png_bytes(np.zeros((101, 100, 3), np.uint8))
        assert_error(post(client, data), 422, "image_too_large")
        assert post(client, png_bytes(np.zeros((100, 100, 3), np.uint8))).status_code == 200


def test_deadline_is_504(tiny_checkpoint):
    with open_client(tiny_checkpoint, request_timeout_s=0.0005) as client:
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), np.uint8))
        assert_error(post(client, big, boxes="[[0, 0, 100, 100]]"), 504, "deadline_exceeded")
        assert "deadline_exceeded" not in client.get("/metrics").text  # reasons are labels, codes are not
        assert 'landmarks_rejected_requests_total{reason="timeout"}' in client.get("/metrics").text


def test_not_ready_and_draining_are_503_with_retry_after(client, face_png):
    service = client.app.state.service
    service.lifecycle.state = "starting"
    response = post(client, face_png[0], boxes=json.dumps([BOX]))
    assert_error(response, 503, "not_ready")
    assert response.headers["retry-after"]
    assert client.get("/health/ready").status_code == 503
    service.lifecycle.state = "ready"
    client.portal.call(service.stop)
    assert_error(post(client, face_png[0], boxes=json.dumps([BOX])), 503, "draining")
    assert_error(client.get("/health/ready"), 503, "draining")


def test_concurrent_requests_are_batched(tiny_checkpoint, face_png):
    with open_client(tiny_checkpoint, max_wait_ms=200, max_batch_size=8) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda _, c=client: post(c, face_png[0], boxes=json.dumps([BOX]), passes="1"), range(8))
            )
        assert all(r.status_code == 200 for r in responses)
        metrics = client.get("/metrics").text
        count = float(
            next(line.split()[-1] for line in metrics.splitlines() if line.startswith("landmarks_batch_size_count"))
        )
        total = float(
            next(line.split()[-1] for line in metrics.splitlines() if line.startswith("landmarks_batch_size_sum"))
        )
        assert total == 8  # eight faces (warm-up forwards bypass the batcher)
        assert count < total  # fewer forwards than faces: a batch held more than one face


def test_render_returns_a_png(client, face_png):
    response = client.post(
        "/landmarks/render", files={"image": ("f.png", face_png[0], "image/png")}, data={"boxes": json.dumps([BOX])}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_openapi_documents_every_error(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/landmarks"]["post"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(op["responses"])
    assert "multipart/form-data" in op["requestBody"]["content"]
    face = spec["components"]["schemas"]["FaceResult"]["properties"]
    assert {"pose", "pose_reason"} <= set(face)
    pose = spec["components"]["schemas"]["HeadPose"]["properties"]
    assert set(pose) == {"yaw", "pitch", "roll", "confidence"}
    assert "image's left" in pose["yaw"]["description"]


def test_every_face_has_a_pose_or_a_reason(client, face_png):
    """The tiny test network's points may or may not fit a head: either way the answer says which."""
    body = client.post(
        "/landmarks", files={"image": ("f.png", face_png[0], "image/png")}, data={"boxes": json.dumps([BOX])}
    ).json()
    [face] = body["faces"]
    assert (face["pose"] is None) != (face["pose_reason"] is None)
    if face["pose"] is not None:
        assert set(face["pose"]) == {"yaw", "pitch", "roll", "confidence"}


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/nope"), 404, "not_found")


def test_docs_page_and_its_assets_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "/openapi.json" in html
    hosts = re.findall(r"(?:src|href)=[\"']?(https?://[^\"' >]+)", html) + re.findall(
        r"url\(['\"]?(https?://[^)'\"]+)", html
    )
    assert hosts == [], hosts  # no CDN, no external favicon: works air-gapped
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert client.get(f"/docs/assets/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404


def test_network_stand_in_keeps_the_response_shape_for_front_end_benchmarks(tiny_checkpoint, face_png):
    settings = make_settings(tiny_checkpoint)
    app = create_app(
        settings, handle_signals=False, connect=functools.partial(load_service, parts=stand_in_parts(settings))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        assert type(client.app.state.service.engine.net).__name__ == "StandInNet"
        response = post(client, face_png[0], boxes=json.dumps([BOX]))
    assert response.status_code == 200
    face = response.json()["faces"][0]
    assert len(face["landmarks"]) == 68
    assert len({tuple(p) for p in face["landmarks"]}) == 1  # every point at the stand-in's one peak


def test_pose_can_be_switched_off_and_says_so(tiny_checkpoint, face_png):
    with open_client(tiny_checkpoint, head_model="none") as off:
        body = off.post(
            "/landmarks", files={"image": ("f.png", face_png[0], "image/png")}, data={"boxes": json.dumps([BOX])}
        ).json()
    [face] = body["faces"]
    assert face["pose"] is None
    assert "off" in face["pose_reason"]
    assert "pose" not in body["timings_ms"]
