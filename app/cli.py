"""Landmarks for photos from the command line: the service's pipeline run directly (no server, no batcher).

    python -m app.cli PHOTO|FOLDER|GLOB ... [--jsonl results.jsonl] [--pts] [--render DIR] [--out picture.png]

Writes one JSON line per photo (``path`` plus the body ``POST /landmarks`` would answer, or ``error`` and
``detail`` for a photo that could not be read: it is reported and skipped, never the end of the run). Folders
are searched for JPEG, PNG, WebP and BMP files (``--recursive`` for sub-folders); faces of several photos share
each network batch. ``--pts`` writes a 300-W ``.pts`` file (1-based, like the data sets) beside each photo for
each face (``name.pts``, then ``name_1.pts``, ...) and never overwrites one; ``--render DIR`` writes a preview
PNG per photo; ``--out`` the preview of a single photo. Settings (checkpoint, device, precision, detector,
passes, ...) come from the same ``LANDMARKS_*`` variables as the service, so the landmarks are the same.

A video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``; read with OpenCV) is tracked as
``/landmarks/stream`` tracks a stream: one JSON line per frame (``frame``, ``time_s`` and the body, each face with
its ``track_id``), ``--video-out FILE.mp4`` writes the annotated video, ``--detect-every`` and ``--no-smoothing``
set the tracking (:class:`model.tracking.TrackOptions`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
from tqdm import tqdm

from app.responses import Prediction, annotate, render_png, to_response
from app.settings import Settings
from model.artifacts import CheckpointError
from model.detector import DetectorError
from model.geometry import Box
from model.imaging import ImageError, decode_image
from model.landmarker import Landmarker
from model.landmarks import format_pts
from model.pipeline import MAX_PASSES, Image, box_problem, boxes_from_json
from model.tracking import TrackOptions

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
PHOTOS_PER_BATCH = 8  # photos decoded and run together; their faces share network batches


def find_photos(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """Photos named by files, folders and globs, in the order given (folders sorted), and inputs that named
    nothing."""
    photos: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            photos += sorted(p for p in found if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.exists():
            photos.append(path)
        elif matches := sorted(glob.glob(item, recursive=recursive)):
            photos += [Path(m) for m in matches if Path(m).is_file()]
        else:
            missing.append(item)
    return list(dict.fromkeys(photos)), missing


def write_pts_files(photo: Path, prediction: Prediction) -> list[Path]:
    """One 300-W ``.pts`` per face beside the photo; an existing file is left alone (ValueError names it)."""
    written = []
    for k, face in enumerate(prediction.faces):
        target = photo.with_name(f"{photo.stem}{'' if k == 0 else f'_{k}'}.pts")
        try:
            with target.open("x") as fh:
                fh.write(format_pts(face.landmarks.points))
        except FileExistsError:
            raise ValueError(f"{target} exists; not overwritten") from None
        written.append(target)
    return written


def unique(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``name_2.png``, ``name_3.png``, ... when this run already wrote it (same stem elsewhere)."""
    candidate, n = path, 1
    while candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def face_limits(max_faces: str | None, boxes: str | None, limit: int) -> tuple[int, list[Box] | None]:
    """``--max-faces`` (1 to ``LANDMARKS_MAX_FACES``, that by default) and ``--boxes`` (at most that many), the
    service's field rules; raises ``ValueError`` as ``code: detail`` with the code the service would answer."""
    most = limit
    if max_faces is not None:
        if not max_faces.strip().isdigit() or not 1 <= int(max_faces) <= limit:
            raise ValueError(f"invalid_max_faces: --max-faces must be an integer between 1 and {limit}")
        most = int(max_faces)
    if boxes is None:
        return most, None
    try:
        parsed = boxes_from_json(boxes)
    except ValueError as exc:
        raise ValueError(f"invalid_boxes: {exc}") from None
    if len(parsed) > most:
        raise ValueError(f"invalid_boxes: {len(parsed)} boxes given; max_faces is {most}")
    return most, parsed


def build_landmarker(settings: Settings, max_faces: int) -> Landmarker:
    """The library's :class:`model.Landmarker` with the service's ``LANDMARKS_*`` settings."""
    return Landmarker.load(
        engine=settings.engine_options(),
        options=settings.pipeline_options(),
        head_model=settings.head_model,
        max_faces=max_faces,
    )


class Annotator:
    """A :class:`model.Landmarker` for a command-line run; :meth:`run` annotates photos in groups."""

    def __init__(
        self, settings: Settings, landmarker: Landmarker, boxes: list[Box] | None, passes: int | None = None
    ) -> None:
        self.settings = settings
        self.landmarker = landmarker
        self.boxes = boxes
        self.passes = passes

    def decode(self, photo: Path) -> tuple[Image, float]:
        t0 = time.perf_counter()
        image = decode_image(photo.read_bytes(), self.settings.max_image_pixels)
        return image, 1000 * (time.perf_counter() - t0)

    def run(self, photos: list[Path]) -> Iterator[tuple[Path, Prediction | str]]:
        """Each photo with its prediction, or with the one-line reason it was skipped."""
        for start in range(0, len(photos), PHOTOS_PER_BATCH):
            group = photos[start : start + PHOTOS_PER_BATCH]
            decoded: list[tuple[Path, Image, float]] = []
            for photo in group:
                try:
                    image, decode_ms = self.decode(photo)
                except ImageError as exc:
                    yield photo, f"{exc.code}: {exc.detail}"
                    continue
                except OSError as exc:
                    yield photo, f"unreadable: {exc.strerror or exc}"
                    continue
                problem = None if self.boxes is None else box_problem(self.boxes, image.shape[1], image.shape[0])
                if problem:
                    yield photo, f"invalid_boxes: {problem}"
                    continue
                decoded.append((photo, image, decode_ms))
            results = self.landmarker.many(
                [image for _, image, _ in decoded],
                None if self.boxes is None else [self.boxes] * len(decoded),
                passes=self.passes,
            )
            for (photo, image, decode_ms), result in zip(decoded, results, strict=True):
                timings = {"decode": round(decode_ms, 3), **{k: round(v, 3) for k, v in result.timings_ms.items()}}
                yield photo, Prediction(image, result.faces, timings)


def video_frames(capture: cv2.VideoCapture) -> Iterator[Image]:
    """The frames of an open capture, in order, as OpenCV gives them (BGR)."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield np.asarray(frame, dtype=np.uint8)


def run_video(video: Path, args: argparse.Namespace, landmarker: Landmarker, out: TextIO) -> int:
    """Track a video file's faces frame by frame: JSON lines, an optional annotated video, a progress bar."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        print(f"error: {video}: OpenCV cannot open it as a video", file=sys.stderr)
        return 2
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 1 <= fps <= 1000 else 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    options = TrackOptions(detect_every=args.detect_every, smoothing=not args.no_smoothing, fps=fps)
    writer: cv2.VideoWriter | None = None
    frames = faces = 0
    show = not args.no_progress and sys.stderr.isatty()
    try:
        with contextlib.ExitStack() as stack, tqdm(total=total, unit="frame", disable=not show) as bar:
            stack.callback(capture.release)
            latest: list[Image] = []

            def feed() -> Iterator[Image]:
                for frame in video_frames(capture):
                    rgb = np.ascontiguousarray(frame[:, :, ::-1])  # OpenCV's BGR, turned once
                    latest[:] = [rgb]  # the tracker takes one frame at a time: this is the one it answers
                    yield rgb

            for index, result in enumerate(landmarker.track(feed(), options)):
                prediction = Prediction(latest[0], result.faces, {k: round(v, 3) for k, v in result.timings_ms.items()})
                body = to_response(prediction, landmarker.engine).model_dump(mode="json")
                out.write(json.dumps({"frame": index, "time_s": round(index / fps, 4), **body}) + "\n")
                frames += 1
                faces += len(result.faces)
                if args.video_out:
                    picture = annotate(prediction)[:, :, ::-1]
                    if writer is None:
                        height, width = picture.shape[:2]
                        writer = cv2.VideoWriter(str(args.video_out), cv2.VideoWriter.fourcc(*"mp4v"), fps,
                                                 (width, height))  # fmt: skip
                        stack.callback(writer.release)
                    writer.write(np.ascontiguousarray(picture))
                bar.update()
    except ValueError as exc:
        print(f"error: {video}: {exc}", file=sys.stderr)
        return 2
    print(f"{frames} frame(s) at {fps:g} frames/s, {faces} face(s) in all", file=sys.stderr)
    return 0 if frames else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="photos, folders or globs (quote globs for ** with --recursive)")
    parser.add_argument("--jsonl", type=Path, help="write the JSON lines here (default: standard output)")
    parser.add_argument("--pts", action="store_true", help="write a 300-W .pts beside each photo, one per face")
    parser.add_argument("--render", type=Path, metavar="DIR", help="write a preview PNG per photo into DIR")
    parser.add_argument("--out", type=Path, help="the preview PNG of a single photo")
    parser.add_argument("--recursive", action="store_true", help="search folders' sub-folders too")
    parser.add_argument("--boxes", help="JSON array of [x1, y1, x2, y2] face boxes for every photo; skips detection")
    parser.add_argument("--max-faces", help="most faces per photo")
    parser.add_argument("--passes", type=int, choices=range(1, MAX_PASSES + 1), metavar="{1,2,3}",
                        help="network passes per face (default: LANDMARKS_PASSES for detected faces; for --boxes 1, "
                        "and 2 where a box does not fit its face's landmarks)")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, help="overrides LANDMARKS_CHECKPOINT")
    parser.add_argument("--device", help="overrides LANDMARKS_DEVICE")
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"], help="overrides LANDMARKS_RUNTIME")
    parser.add_argument("--onnx-model", type=Path, help="overrides LANDMARKS_ONNX_MODEL")
    parser.add_argument("--convention", help="annotation convention (default, none, aflw2000); LANDMARKS_CONVENTION")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    parser.add_argument("--video-out", type=Path, metavar="FILE.mp4", help="video input: write it annotated here")
    parser.add_argument("--detect-every", type=int, default=TrackOptions.detect_every,
                        help="video input: frames between detector runs while faces are tracked")  # fmt: skip
    parser.add_argument("--no-smoothing", action="store_true", help="video input: no One Euro filter on the points")
    args = parser.parse_args(argv)
    if args.detect_every < 1:
        parser.error("--detect-every must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    videos = [Path(i) for i in args.inputs if Path(i).suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(args.inputs) > 1:
        print("error: give one video at a time (or photos only)", file=sys.stderr)
        return 2
    if videos and not videos[0].is_file():
        print(f"error: {videos[0]}: no such file", file=sys.stderr)
        return 2
    photos, missing = ([], []) if videos else find_photos(args.inputs, args.recursive)
    for item in missing:
        print(f"error: {item}: no such file, folder or matching path", file=sys.stderr)
    if not photos and not videos:
        print("error: no photo to annotate", file=sys.stderr)
        return 2
    if args.out and len(photos) > 1:
        print("error: --out is for a single photo; use --render DIR for several", file=sys.stderr)
        return 2
    given = {"checkpoint": args.checkpoint, "device": args.device, "runtime": args.runtime}
    given["convention"] = args.convention
    given["onnx_model"] = args.onnx_model
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        settings = Settings(**overrides)
        max_faces, boxes = face_limits(args.max_faces, args.boxes, settings.max_faces)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        landmarker = build_landmarker(settings, max_faces)
        annotator = Annotator(settings, landmarker, boxes, args.passes)
    except (CheckpointError, DetectorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if videos:
        with args.jsonl.open("w") if args.jsonl else contextlib.nullcontext(sys.stdout) as stream:
            return run_video(videos[0], args, landmarker, stream)
    if args.render:
        args.render.mkdir(parents=True, exist_ok=True)
    out: TextIO = args.jsonl.open("w") if args.jsonl else sys.stdout
    failed = faces = 0
    rendered: set[Path] = set()
    show = not args.no_progress and sys.stderr.isatty() and len(photos) > 1
    try:
        with tqdm(total=len(photos), unit="photo", disable=not show, dynamic_ncols=True) as bar:
            for photo, outcome in annotator.run(photos):
                bar.update()
                if isinstance(outcome, str):
                    failed += 1
                    code, _, detail = outcome.partition(": ")
                    out.write(json.dumps({"path": str(photo), "error": code, "detail": detail}) + "\n")
                    tqdm.write(f"skipped {photo}: {outcome}", file=sys.stderr)
                    continue
                faces += len(outcome.faces)
                body = to_response(outcome, landmarker.engine).model_dump(mode="json")
                out.write(json.dumps({"path": str(photo), **body}) + "\n")
                if args.pts:
                    try:
                        write_pts_files(photo, outcome)
                    except ValueError as exc:
                        tqdm.write(f"warning: {exc}", file=sys.stderr)
                if args.render or args.out:
                    target = args.out or unique(args.render / f"{photo.stem}.png", rendered)
                    target.write_bytes(render_png(outcome))
                    rendered.add(target)
    finally:
        if args.jsonl:
            out.close()
    done = len(photos) - failed
    print(f"{done} photo(s), {faces} face(s); {failed} skipped", file=sys.stderr)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
