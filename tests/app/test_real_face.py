"""The shipped checkpoint on a real AFLW2000-3D val face (skipped when the checkpoint or the data is absent)."""

import json

import numpy as np
import pytest

from app.settings import DEFAULT_CHECKPOINT
from tests.app.conftest import open_client
from training.datasets import read_aflw2000
from training.metrics import box_size, nme


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_real_face_within_10_percent_box_nme(aflw_dir):
    samples = read_aflw2000(aflw_dir, "val")[:5]
    with open_client(DEFAULT_CHECKPOINT) as client:
        errors = []
        for sample in samples:
            box = [*sample.points.min(0), *sample.points.max(0)]
            response = client.post(
                "/landmarks",
                files={"image": ("f.jpg", sample.image.read_bytes(), "image/jpeg")},
                data={"boxes": json.dumps([box])},
            )
            assert response.status_code == 200
            pred = np.array(response.json()["faces"][0]["landmarks"])[None]
            errors.append(nme(pred, sample.points[None], box_size(sample.points[None]))[0])
        assert np.median(errors) < 0.10, errors
