"""Property-based fuzzing of the upload endpoint: whatever a client sends, only documented statuses come back."""

import json
import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
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
            passes=max_faces_field,
            filename=st.text(max_size=12),
            content_type=st.sampled_from(["image/png", "text/plain", ""]),
        )
        def check(image, boxes, max_faces, passes, filename, content_type):
            files = {"image": (filename or "x", image, content_type)} if image is not None else None
            fields = {"boxes": boxes, "max_faces": max_faces, "passes": passes}
            data = {k: v for k, v in fields.items() if v is not None}
            response = fuzz_client.post("/landmarks", files=files, data=data or None)
            assert response.status_code in DOCUMENTED, (response.status_code, response.text)
            if response.status_code != 200:
                assert set(response.json()) == {"error", "detail"}
            else:
                assert isinstance(response.json()["faces"], list)

        check()


option_names = st.sampled_from(["detect_every", "smoothing", "min_cutoff", "beta", "max_faces", "api_key", "other"])
option_values = st.one_of(
    st.text(max_size=8), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(option_names, option_values, max_size=5))
@example({"detect_every": math.inf})  # found by this test in CI: int(inf) raised OverflowError, not a refusal
@example({"max_faces": -math.inf, "min_cutoff": math.nan})
def test_stream_options_fuzz_are_taken_or_refused_with_1008(values):
    """Whatever a client puts in the query string or its first JSON message: valid options, or a 1008 refusal
    with an `invalid_options` message (never another exception, so never a 500 or a dropped connection)."""
    from app.routes.stream import POLICY, StreamRefusal, parse_options

    refused: StreamRefusal | None = None
    try:
        options, max_faces = parse_options(values, max_faces_limit=10)
    except StreamRefusal as exc:
        refused = exc
    if refused is not None:
        assert (refused.code, refused.error) == (POLICY, "invalid_options")
    else:
        assert options.problem() is None
        assert 1 <= max_faces <= 10
