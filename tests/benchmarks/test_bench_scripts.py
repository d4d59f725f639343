"""The benchmark scripts run as their users run them (``python -m benchmarks.…`` in a subprocess): no test imports
``benchmarks/``. Slow set: the model benchmark times real forwards for ~15 s."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_model_benchmark_writes_its_report(tmp_path):
    out = tmp_path / "model.md"
    command = [sys.executable, "-m", "benchmarks.model_bench", "--presets", "cpu", "--batch-sizes", "1,2",
               "--modes", "fp32", "--threads", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=240)
    report = out.read_text()
    gflop = re.search(r"### `cpu` \(128² input, 32² heatmaps\): ([0-9.]+) GFLOP per face", report)
    assert gflop is not None, report
    assert 1.0 < float(gflop.group(1)) < 20.0  # FLOPs were counted
    row = re.search(r"^\| fp32 \| ([0-9.]+) \| ([0-9.]+) \| ([0-9]+) \| ([0-9]+) % \|$", report, re.MULTILINE)
    assert row is not None, report
    assert float(row.group(1)) > 0  # faces/s at batch 1
    assert float(row.group(2)) > 0  # and 2
    stages = re.findall(r"^\| (FC-DenseNet56 subnet|kernel convolution|dilated skip refiner|sub-pixel decode) "
                        r"\| ([0-9.]+) \|$", report, re.MULTILINE)  # fmt: skip
    assert len(stages) == 4, report
    assert all(float(ms) > 0 for _, ms in stages)
