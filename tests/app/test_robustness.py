"""Fuzz and fault tests of the request path's parsers (issue: no 500 under any input)."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from app.errors import ServiceError
from app.forms import MAX_BOXES_TEXT, parse_boxes
from app.imaging import PixelBudget, decode_image
from model.imaging import orient_array
from model.render import draw_landmarks
from tests.app.conftest import open_client, png_bytes
from tests.conftest import draw_face, mean_face
from tests.support.server import ROOT

PORTRAIT = (ROOT / "tests" / "data" / "astronaut.jpg").read_bytes()
DOCUMENTED = {200, 400, 413, 415, 422, 503, 504}


def encoded(fmt: str, **kwargs: object) -> bytes:
    image = np.asarray(Image.open(io.BytesIO(PORTRAIT)).convert("RGB"))[::4, ::3]  # 128 x 171: not square
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


SEEDS = {"JPEG": encoded("JPEG", quality=80), "PNG": encoded("PNG"), "WEBP": encoded("WEBP", quality=80)}


# --- boxes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 5000 + "]" * 5000,  # deep nesting
        "[[" + "9" * 5000 + ", 0, 10, 10]]",  # an integer of thousands of digits
        "[[1e300, 1e300, -1e300, 5]]",
        "[[0, 0, 1e300, 1e300]]",
        "[[NaN, 0, 10, 10]]",
        "[[Infinity, 0, 10, 10]]",
        "[[true, 0, 10, 10]]",
        '"[[0,0,1,1]]"',
        "[" + ",".join(["[0,0,10,10]"] * 2000) + "]",  # over the length limit
        "\udcff",
    ],
)
def test_hostile_boxes_are_400(raw):
    with pytest.raises(ServiceError) as err:
        parse_boxes(raw, max_faces=10)
    assert err.value.status == 400
    assert err.value.code == "invalid_boxes"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=5)),
            lambda inner: st.lists(inner, max_size=5),
            max_leaves=30,
        ).map(json.dumps),
    )
)
def test_boxes_parser_answers_400_or_valid_boxes(raw):
    try:
        boxes = parse_boxes(raw, max_faces=10)
    except ServiceError as err:
        refused: ServiceError | None = err
    else:
        refused = None
    if refused is not None:
        assert refused.status == 400
        return
    assert boxes is None or all(len(b) == 4 and all(isinstance(v, float) and abs(v) <= 1e6 for v in b) for b in boxes)
    assert len(raw) <= MAX_BOXES_TEXT


# --- image decoding ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=6),
)
def test_mutated_jpeg_png_webp_decode_or_give_415(fmt, cut, flips):
    data = bytearray(SEEDS[fmt])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    data = data[: max(1, len(data) - cut)]
    try:
        rgb = decode_image(bytes(data), max_pixels=4_000_000)
    except ServiceError as err:
        refused: ServiceError | None = err
    else:
        refused = None
    if refused is not None:
        assert refused.status in (415, 422)
        assert "0x" not in refused.detail  # no object reprs with heap addresses
        return
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3
    assert rgb.shape[2] == 3


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """The portrait as JPEG with a hand-made little-endian EXIF IFD of (tag, type, count, value bytes)."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")[:4]
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    jpeg = encoded("JPEG", quality=80)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_malformed_exif_is_ignored_and_a_valid_orientation_is_applied():
    plain = decode_image(encoded("JPEG", quality=80), 10**7)
    # An orientation tag plus ImageWidth stored as text: Pillow rotates, then fails to re-write the EXIF block.
    broken = jpeg_with_exif([(0x0112, 3, 1, struct.pack("<H", 6)), (0x0100, 2, 2, b"ab")])
    assert decode_image(broken, 10**7).shape in (plain.shape, (plain.shape[1], plain.shape[0], 3))
    rotated = decode_image(jpeg_with_exif([(0x0112, 3, 1, struct.pack("<H", 6))]), 10**7)
    assert rotated.shape == (plain.shape[1], plain.shape[0], 3)  # orientation 6: turned a quarter


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_the_opencv_path_matches_pillows_exif_transpose(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)  # lossless, so the decoded pixels can be compared exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    np.testing.assert_array_equal(orient_array(pixels, orientation), expected)
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), 10**7), expected)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_opencv_decode_gives_pillows_pixels(fmt, mode):
    image = Image.open(io.BytesIO(PORTRAIT)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=85)
    data = buffer.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    got = decode_image(data, 10**7)
    assert got.shape == expected.shape
    assert got.flags.c_contiguous
    # Lossless formats agree exactly; JPEG and lossy WebP decoders may round the inverse DCT differently.
    assert np.abs(got.astype(np.int16) - expected).max() <= (0 if fmt == "PNG" else 8)


def test_16_bit_grey_png_keeps_its_tones():
    grey = np.asarray(Image.open(io.BytesIO(PORTRAIT)).convert("L"), dtype=np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    rgb = decode_image(buffer.getvalue(), 10**7)
    assert abs(float(rgb.mean()) - float(grey.mean()) / 257) < 1.0  # not clipped to white


def test_oversized_header_gets_our_message_not_pillows():
    header = encoded("PNG")
    ihdr = b"IHDR" + struct.pack(">II", 60000, 60000) + header[24:29]  # width, height, then depth etc. unchanged
    big = header[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + header[33:]
    with pytest.raises(ServiceError) as err:
        decode_image(big, 40_000_000)
    assert err.value.status == 422
    assert err.value.detail.startswith("image is 60000x60000")


def test_pixel_budget_admits_one_image_and_refuses_a_second_beyond_it():
    budget = PixelBudget(100)
    with budget.hold() as first:
        first(90)
        with budget.hold() as second, pytest.raises(ServiceError) as err:
            second(20)
        assert err.value.status == 503
        assert err.value.code == "busy"
        with budget.hold() as third:
            third(10)
            assert budget.used == 100
    assert budget.used == 0
    with budget.hold() as alone:
        alone(150)  # one image alone always runs (the settings keep it under the budget)


def test_concurrent_huge_claims_are_refused_with_503_not_decoded(tiny_checkpoint):
    from app.service import LandmarkService

    gate = threading.Event()
    original = LandmarkService._off_loop

    async def slow_off_loop(self, fn):  # hold the first request's pixels while the others arrive
        result = await original(self, fn)
        await __import__("asyncio").get_running_loop().run_in_executor(None, gate.wait, 5)
        return result

    image = png_bytes(np.full((1000, 1000, 3), 100, np.uint8))
    with open_client(tiny_checkpoint, max_pixels_in_flight=1_500_000, max_image_pixels=1_200_000) as client:
        LandmarkService._off_loop = slow_off_loop  # type: ignore[method-assign]
        try:
            results: list[int] = []
            threads = [
                threading.Thread(
                    target=lambda: results.append(
                        client.post(
                            "/landmarks",
                            files={"image": ("a.png", image, "image/png")},
                            data={"boxes": "[[10, 10, 200, 200]]"},
                        ).status_code
                    )
                )
                for _ in range(3)
            ]
            for t in threads:
                t.start()
            while len(results) < 2 and any(t.is_alive() for t in threads):
                threads[0].join(0.05)
            gate.set()
            for t in threads:
                t.join(30)
        finally:
            LandmarkService._off_loop = original  # type: ignore[method-assign]
        assert sorted(results) == [200, 503, 503]
        assert 'reason="busy"' in client.get("/metrics").text


# --- rendering and the whole route ---------------------------------------------------------------------------


def test_render_survives_huge_and_non_finite_coordinates():
    image, _ = draw_face(128, 0)
    points = mean_face(60, (64, 64))
    points[3] = [1e300, -1e300]
    points[5] = [np.nan, 1.0]
    out = draw_landmarks(image, points, np.full(68, 0.5), box=np.array([10.0, 10.0, 1e300, 1e300]))
    assert out.shape == image.shape
    assert (out != image).any()


def test_render_route_with_a_huge_far_corner_is_not_500(tiny_checkpoint):
    image, _ = draw_face(200, 2)
    with open_client(tiny_checkpoint) as client:
        for boxes in ("[[10, 10, 790, 790]]", "[[10, 10, 1000000, 1000000]]"):
            response = client.post(
                "/landmarks/render", files={"image": ("a.png", png_bytes(image), "image/png")}, data={"boxes": boxes}
            )
            assert response.status_code in (200, 400), response.text
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_boxes"


def test_every_hostile_upload_gets_a_documented_status_and_the_json_error_shape(tiny_checkpoint):
    grey16 = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(grey16, format="PNG")
    cases = [
        {"image": jpeg_with_exif([(0x0112, 3, 1, struct.pack("<H", 8)), (0x0100, 2, 2, b"ab")])},
        {"image": grey16.getvalue()},
        {"image": b"GIF89a" + b"\0" * 50},
        {"image": b"\x89PNG\r\n\x1a\n" + b"\0" * 40},
        {"image": SEEDS["PNG"], "boxes": "[" * 3000 + "]" * 3000},
        {"image": SEEDS["PNG"], "boxes": "[[" + "1" * 4400 + ", 0, 5, 5]]"},
        {"image": SEEDS["PNG"], "boxes": "[[-1e300, -1e300, 1e300, 1e300]]"},
    ]
    with open_client(tiny_checkpoint) as client:
        for case in cases:
            for route in ("/landmarks", "/landmarks/render"):
                data = {k: v for k, v in case.items() if k != "image"}
                response = client.post(
                    route, files={"image": ("x", case["image"], "application/octet-stream")}, data=data
                )
                assert response.status_code in DOCUMENTED, (route, response.status_code, response.text)
                if response.status_code != 200:
                    body = response.json()
                    assert set(body) == {"error", "detail"}
                    assert "0x" not in body["detail"]
