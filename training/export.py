"""Export a checkpoint as one ONNX file: ``python -m training.export [--checkpoint CKPT] [--out FILE.onnx]``.

The graph is the whole engine (:class:`model.inference.ExportGraph`): uint8 RGB crops ``(N, S, S, 3)`` and their
crop -> image affines ``(N, 2, 3)`` in; image-space ``points`` ``(N, 68, 2)``, calibrated ``confidence``
``(N, 68)`` and stage 1's ``coarse_points`` out, with a dynamic batch; the annotation convention (``--convention``)
is part of the graph. The model's config, name, version, training metadata, normalisation, calibration and that
convention's name travel in the file's metadata (``dsc_landmarks``), so :class:`model.onnx_engine.OnnxEngine` serves
it without PyTorch. After writing, the file is run on ONNX Runtime against PyTorch on the same crops (real faces
with ``--data``) and the largest landmark difference is printed; the export fails if it exceeds ``--tolerance``
pixels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from model.artifacts import SHIPPED_CHECKPOINT, SHIPPED_ONNX, CheckpointError
from model.engine import Crop, EngineOptions
from model.geometry import as_box, box_from_points
from model.inference import ExportGraph, InferenceModel, load_for_inference
from model.network import PIXEL_MEAN, PIXEL_SCALE
from model.onnx_engine import INPUTS, METADATA_KEY, OUTPUTS, OnnxEngine
from model.pipeline import Framing, face_crop

log = logging.getLogger("training.export")
OPSET = 18


def export(engine: InferenceModel, out: Path, opset: int = OPSET) -> None:
    """Write ``engine`` (fp32, eager) as ONNX with its metadata."""
    import onnx

    graph = ExportGraph(engine).eval()
    size = engine.config.input_size
    crops = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    inverse = torch.eye(2, 3).expand(2, 2, 3).contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (crops, inverse),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes={"crops": {0: batch}, "inverse": {0: batch}},
            opset_version=opset,
            external_data=False,
        )
    assert program is not None
    program.save(str(tmp), external_data=False)
    model = onnx.load(str(tmp))
    info = {
        "config": engine.config.to_dict(),
        "metadata": engine.metadata,
        "convention": engine.convention_name,  # baked into the graph
        "opset": opset,
        "inputs": {"crops": "uint8 (N, S, S, 3) RGB", "inverse": "float32 (N, 2, 3) crop -> image"},
        "outputs": {"points": "(N, K, 2) image px", "confidence": "(N, K) in [0, 1]", "coarse_points": "(N, K, 2)"},
        "normalisation": {"mean": float(PIXEL_MEAN), "scale": float(PIXEL_SCALE), "layout": "NHWC uint8 RGB"},
    }
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)
    for leftover in out.parent.glob(tmp.name + "*"):
        leftover.unlink()


def quantize_int8(src: Path, dst: Path, crops: list[Crop]) -> None:
    """ONNX Runtime static int8 of the convolutions only (QDQ, per-channel weights, uint8 activations calibrated on
    ``crops``): what FC-DenseNet's BN-ReLU-conv order allows (its batch norms cannot fold into the convs). The
    metadata is carried over. Measured, not shipped: see ``benchmarks/results/runtimes.md``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(
                [{INPUTS[0]: c.image[None], INPUTS[1]: c.inverse[None].astype(np.float32)} for c in crops]
            )

        def get_next(self) -> dict[str, object] | None:
            return next(self.items, None)

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        op_types_to_quantize=["Conv"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    model, source = onnx.load(str(dst)), onnx.load(str(src))
    del model.metadata_props[:]
    for prop in source.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(dst))


def check_crops(size: int, data: Path | None, count: int = 64, split: str = "val") -> list[Crop]:
    """Real faces of a 300-W style folder's split (ground-truth boxes), else random crops."""
    if data is not None:
        from training.datasets import load_image, load_samples

        samples = load_samples("pts_folder", data, split)[:count]
        framings = [Framing(as_box(box_from_points(s.points))) for s in samples]
        return [face_crop(load_image(s.image), f, size) for s, f in zip(samples, framings, strict=True)]
    rng = np.random.default_rng(0)
    return [Crop(rng.integers(0, 255, (size, size, 3), np.uint8), np.eye(2, 3) * 2) for _ in range(count)]


def max_difference(engine: InferenceModel, onnx_engine: OnnxEngine, crops: list[Crop]) -> dict[str, float]:
    """Largest absolute difference of ONNX Runtime against PyTorch: landmarks (px, the largest and the 99.9th
    percentile over all points) and confidence.

    The two runtimes' float rounding differs in the last bits; where two neighbouring heatmap pixels are nearly
    equal at a peak, that can pick the other arg-max, and the sub-pixel step from the other pixel lands a few
    hundredths of a pixel away (seen once in 3,264 points of real faces: 0.074 px, while 99.9 % agree to 5e-5 px),
    so the check is on the percentile, with a looser bound on the largest."""
    ours, theirs = [], []
    for start in range(0, len(crops), 16):
        ours += engine.infer(crops[start : start + 16])
        theirs += onnx_engine.infer(crops[start : start + 16])
    points = np.concatenate([np.abs(a.points - b.points).max(axis=1) for a, b in zip(ours, theirs, strict=True)])
    return {
        "points_px": float(points.max()),
        "points_px_p999": float(np.quantile(points, 0.999)),
        "confidence": float(max(np.abs(a.confidence - b.confidence).max() for a, b in zip(ours, theirs, strict=True))),
    }


MAX_POINT_PX = 0.25  # the largest single-point difference allowed (an arg-max near-tie, see max_difference)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    p.add_argument("--out", type=Path, default=None, help="default: the checkpoint's path with .onnx")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--data", type=Path, default=None, help="check on this 300-W style folder's val faces")
    p.add_argument(
        "--tolerance", type=float, default=0.01, help="99.9th percentile of the landmark difference allowed, px"
    )
    p.add_argument(
        "--convention",
        default="default",
        help="annotation convention baked into the graph: default (the checkpoint's), none, or a stored name",
    )
    p.add_argument(
        "--int8", action="store_true", help="also write <out>.int8.onnx (calibrated on 64 --data train faces)"
    )
    return p


def main(args: argparse.Namespace) -> dict[str, float]:
    options = EngineOptions(device="cpu", precision="fp32", cuda_graphs=False, convention=args.convention)
    engine = load_for_inference(args.checkpoint, options)
    out = args.out or (SHIPPED_ONNX if args.checkpoint == SHIPPED_CHECKPOINT else args.checkpoint.with_suffix(".onnx"))
    export(engine, out)
    diff = max_difference(engine, OnnxEngine(out), check_crops(engine.config.input_size, args.data))
    log.info("wrote %s (%.1f MB); ONNX Runtime vs PyTorch: %s", out, out.stat().st_size / 1e6, diff)
    if diff["points_px_p999"] > args.tolerance or diff["points_px"] > MAX_POINT_PX:
        raise ValueError(
            f"ONNX Runtime differs from PyTorch by {diff['points_px_p999']:.4f} px at the 99.9th percentile "
            f"(> {args.tolerance}) or {diff['points_px']:.4f} px at most (> {MAX_POINT_PX})"
        )
    if args.int8:
        if args.data is None:
            raise ValueError("--int8 calibrates on real faces: give --data")
        int8 = out.with_suffix(".int8.onnx")
        quantize_int8(out, int8, check_crops(engine.config.input_size, args.data, split="train"))
        log.info("wrote %s (%.1f MB)", int8, int8.stat().st_size / 1e6)
    return diff


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per folded constant otherwise
    try:
        main(get_args_parser().parse_args())
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    cli()
