"""Property-based fuzzing of the upload endpoint: whatever a client sends, only documented statuses come back."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.app.conftest import open_client, png_bytes

DOCUMENTED = {200, 400, 413, 415, 422, 503, 504}
VALID_PNG = png_bytes(np.full((48, 64, 3), 90, np.uint8))

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))
boxes_field = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.lists(st.lists(numbers, min_size=0, max_size=5), max_size=4).map(lambda v: json.dumps(v)),
)
image_field = st.one_of(
    st.binary(max_size=300),
    st.just(VALID_PNG),
    st.binary(max_size=64).map(lambda tail: VALID_PNG[:40] + tail),  # truncated / corrupted PNG
)
max_faces_field = st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 200).map(str))


def test_upload_fuzz_only_documented_statuses(tiny_checkpoint):
    with open_client(tiny_checkpoint, max_upload_bytes=2048) as fuzz_client:

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            image=st.one_of(st.none(), image_field),
            boxes=boxes_field,
            max_faces=max_faces_field,
            filename=st.text(max_size=12),
            content_type=st.sampled_from(["image/png", "text/plain", ""]),
        )
        def check(image, boxes, max_faces, filename, content_type):
            files = {"image": (filename or "x", image, content_type)} if image is not None else None
            data = {k: v for k, v in {"boxes": boxes, "max_faces": max_faces}.items() if v is not None}
            response = fuzz_client.post("/landmarks", files=files, data=data or None)
            assert response.status_code in DOCUMENTED, (response.status_code, response.text)
            if response.status_code != 200:
                assert set(response.json()) == {"error", "detail"}
            else:
                assert isinstance(response.json()["faces"], list)

        check()
