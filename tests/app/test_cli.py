import json

import numpy as np
import pytest

from app.cli import main
from model.artifacts import SHIPPED_CHECKPOINT
from tests.app.conftest import open_client, png_bytes
from tests.conftest import draw_face
from tests.support.server import ROOT

BOXES = "[[30, 30, 130, 130]]"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for k, name in enumerate(["a.jpg", "b.png", "sub/c.jpg"]):
        image, _ = draw_face(160, seed=k)
        (folder / name).write_bytes(png_bytes(image, "JPEG" if name.endswith("jpg") else "PNG"))
    (folder / "notes.txt").write_text("not a photo")
    return folder


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_picture_and_json_line(tmp_path, tiny_checkpoint, capsys):
    image, _ = draw_face(160, seed=3)
    path = tmp_path / "face.jpg"
    path.write_bytes(png_bytes(image, "JPEG"))
    out = tmp_path / "a.jsonl"
    args = [str(path), "--out", str(tmp_path / "a.png"), "--jsonl", str(out), "--boxes", BOXES]
    code = main([*args, "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    [body] = lines(out)
    assert body["path"] == str(path)
    assert np.array(body["faces"][0]["landmarks"]).shape == (68, 2)
    assert "1 photo(s), 1 face(s); 0 skipped" in capsys.readouterr().err


def test_cli_gives_the_services_landmarks(tmp_path, tiny_checkpoint, monkeypatch):
    path = ROOT / "tests" / "data" / "astronaut.jpg"  # a real portrait: YuNet finds the face
    data = path.read_bytes()
    monkeypatch.setenv("LANDMARKS_PRECISION", "fp32")
    with open_client(tiny_checkpoint, precision="fp32") as client:
        # caller boxes by default and with --passes 2; detector: YuNet + second pass
        for boxes, passes in (("[[150, 60, 330, 280]]", None), ("[[150, 60, 330, 280]]", "2"), (None, None)):
            out = tmp_path / "out.jsonl"
            extra = (["--boxes", boxes] if boxes else []) + (["--passes", passes] if passes else [])
            assert main([str(path), "--jsonl", str(out), "--checkpoint", str(tiny_checkpoint), *extra]) == 0
            [cli_body] = lines(out)
            form = ({"boxes": boxes} if boxes else {}) | ({"passes": passes} if passes else {})
            served = client.post("/landmarks", files={"image": ("f.jpg", data)}, data=form).json()
            assert len(served["faces"]) == 1
            assert len(cli_body["faces"]) == 1
            for a, b in zip(cli_body["faces"], served["faces"], strict=True):
                np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-3)
                assert a["box"] == pytest.approx(b["box"], abs=1e-3)
                assert a["detection_score"] == b["detection_score"]


def test_cli_takes_folders_and_globs_writes_pts_and_previews_and_skips_bad_files(tmp_path, photos, tiny_checkpoint):
    (photos / "broken.jpg").write_bytes(b"not an image")
    out, previews = tmp_path / "out.jsonl", tmp_path / "previews"
    args = [str(photos), str(photos / "sub" / "*.jpg"), "--jsonl", str(out), "--pts", "--render", str(previews)]
    code = main([*args, "--boxes", BOXES, "--checkpoint", str(tiny_checkpoint)])
    assert code == 1  # one photo was skipped: the exit status says so, the run went on
    body = {line["path"]: line for line in lines(out)}
    assert sorted(body) == sorted(str(photos / n) for n in ("a.jpg", "b.png", "broken.jpg", "sub/c.jpg"))
    assert body[str(photos / "broken.jpg")]["error"] == "unsupported_media_type"
    for name in ("a", "b", "sub/c"):
        pts = (photos / f"{name}.pts").read_text().splitlines()
        assert pts[:3] == ["version: 1", "n_points:  68", "{"]
        assert len(pts) == 68 + 4
        first = [float(v) for v in pts[3].split()]
        landmarks = body[str(next(photos.glob(f"{name}.*g")))]["faces"][0]["landmarks"]
        assert first == pytest.approx([landmarks[0][0] + 1, landmarks[0][1] + 1], abs=2e-3)  # 1-based
    assert sorted(p.name for p in previews.iterdir()) == ["a.png", "b.png", "c.png"]


def test_cli_never_overwrites_an_existing_pts(tmp_path, photos, tiny_checkpoint, capsys):
    truth = photos / "a.pts"
    truth.write_text("ground truth")
    code = main([str(photos / "a.jpg"), "--pts", "--boxes", BOXES, "--checkpoint", str(tiny_checkpoint)])
    assert code == 0
    assert truth.read_text() == "ground truth"
    assert "a.pts exists; not overwritten" in capsys.readouterr().err


def test_cli_reports_bad_input_without_a_traceback(tmp_path, tiny_checkpoint, capsys):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"not an image")
    assert main([str(path), "--checkpoint", str(tiny_checkpoint)]) == 1
    assert "unsupported_media_type" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jpg"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(path), "--checkpoint", str(tmp_path / "nope.pt")]) == 3
    assert main([str(path), "--boxes", "[[1, 2]]", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "invalid_boxes" in capsys.readouterr().err
    two = "[[1, 1, 9, 9], [2, 2, 9, 9]]"
    assert main([str(path), "--boxes", two, "--max-faces", "1", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "invalid_boxes: 2 boxes given; max_faces is 1" in capsys.readouterr().err
    for bad in ("0", "x", "1000000"):
        assert main([str(path), "--max-faces", bad, "--checkpoint", str(tiny_checkpoint)]) == 2
        assert "invalid_max_faces" in capsys.readouterr().err


def test_cli_checks_caller_boxes_against_each_photo(tmp_path, tiny_checkpoint, capsys):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    small.write_bytes(png_bytes(draw_face(100, seed=1)[0]))
    large.write_bytes(png_bytes(draw_face(400, seed=2)[0]))
    out = tmp_path / "out.jsonl"
    box = "[[150, 150, 300, 300]]"  # inside the large photo, outside the small one
    code = main([str(small), str(large), "--jsonl", str(out), "--boxes", box, "--checkpoint", str(tiny_checkpoint)])
    assert code == 1
    first, second = lines(out)
    assert first["error"] == "invalid_boxes"
    assert "outside the 100x100 image" in first["detail"]
    assert len(second["faces"]) == 1
    assert "1 skipped" in capsys.readouterr().err


def write_clip(path, frames: int = 8, step: int = 2) -> None:
    """The test portrait moving right by ``step`` px a frame, as an MPEG-4 file OpenCV can read back."""
    import cv2

    image = cv2.imread(str(ROOT / "tests" / "data" / "astronaut.jpg"))
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (width, height))
    for i in range(frames):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, step * i], [0, 1, 0]]), (width, height)))
    writer.release()


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_cli_tracks_a_video_into_json_lines_and_an_annotated_video(tmp_path, capsys):
    import cv2

    clip, out, video = tmp_path / "clip.mp4", tmp_path / "frames.jsonl", tmp_path / "annotated.mp4"
    write_clip(clip)
    code = main([str(clip), "--jsonl", str(out), "--video-out", str(video), "--detect-every", "4", "--no-progress"])
    assert code == 0
    frames = lines(out)
    assert [f["frame"] for f in frames] == list(range(8))
    assert frames[1]["time_s"] == pytest.approx(0.04)
    assert [[face["track_id"] for face in f["faces"]] for f in frames] == [[1]] * 8
    xs = [np.mean(np.array(f["faces"][0]["landmarks"])[:, 0]) for f in frames]
    assert xs[-1] - xs[0] == pytest.approx(14, abs=2)  # the face moved 7 x 2 px; the filter follows it
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    assert "8 frame(s) at 25 frames/s" in capsys.readouterr().err


def test_cli_refuses_a_missing_or_unreadable_video_in_one_line(tmp_path, tiny_checkpoint, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert main([str(tmp_path / "none.mp4"), *args]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    assert main([str(bad), *args]) == 2
    assert "cannot open it as a video" in capsys.readouterr().err
