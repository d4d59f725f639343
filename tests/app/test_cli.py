import json

import numpy as np

from app.cli import main
from tests.app.conftest import png_bytes
from tests.conftest import draw_face


def test_cli_writes_picture_and_json(tmp_path, tiny_checkpoint, capsys):
    image, _ = draw_face(160, seed=3)
    path = tmp_path / "face.jpg"
    path.write_bytes(png_bytes(image, "JPEG"))
    code = main(
        [
            str(path),
            "--out",
            str(tmp_path / "a.png"),
            "--json",
            str(tmp_path / "a.json"),
            "--boxes",
            "[[30, 30, 130, 130]]",
            "--checkpoint",
            str(tiny_checkpoint),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    body = json.loads((tmp_path / "a.json").read_text())
    assert np.array(body["faces"][0]["landmarks"]).shape == (68, 2)
    assert "1 face(s)" in capsys.readouterr().err


def test_cli_reports_bad_input_without_a_traceback(tmp_path, tiny_checkpoint, capsys):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"not an image")
    assert main([str(path), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "unsupported_media_type" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jpg"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert main([str(path), "--checkpoint", str(tmp_path / "nope.pt")]) == 3
