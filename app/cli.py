"""Landmarks for one image from the command line, through the same pipeline as the service.

    python -m app.cli IMAGE --out annotated.png [--json result.json] [--boxes '[[x1,y1,x2,y2]]']

Settings (checkpoint, device, precision, ...) come from the same ``LANDMARKS_*`` variables as the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from app.errors import ServiceError
from app.forms import parse_boxes, parse_max_faces
from app.metrics import Metrics
from app.responses import render_png, to_response
from app.service import load_service
from app.settings import Settings
from model.checkpoint import CheckpointError


async def _predict(settings: Settings, data: bytes, boxes: str | None, max_faces: str | None) -> tuple[str, bytes]:
    service = await load_service(settings, Metrics())
    await service.start()
    try:
        limit = parse_max_faces(max_faces, settings.max_faces)
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        prediction = await service.predict(data, parse_boxes(boxes, limit), limit, deadline)
    finally:
        await service.stop()
    return to_response(prediction, service.predictor.engine).model_dump_json(indent=2), render_png(prediction)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--out", type=Path, help="write the annotated PNG here")
    parser.add_argument("--json", type=Path, help="write the JSON response here (default: print it)")
    parser.add_argument("--boxes", help="JSON array of [x1, y1, x2, y2] face boxes; skips detection")
    parser.add_argument("--max-faces", help="most faces to return")
    parser.add_argument("--checkpoint", type=Path, help="overrides LANDMARKS_CHECKPOINT")
    parser.add_argument("--device", help="overrides LANDMARKS_DEVICE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: v for k, v in {"checkpoint": args.checkpoint, "device": args.device}.items() if v is not None}
    settings = Settings(**overrides, warmup_batches=0)
    try:
        data = args.image.read_bytes()
        text, png = asyncio.run(_predict(settings, data, args.boxes, args.max_faces))
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.out:
        args.out.write_bytes(png)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    faces = len(json.loads(text)["faces"])
    print(f"{faces} face(s){f'; picture in {args.out}' if args.out else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
