"""The benchmark scripts' own helpers: the one test folder that imports benchmarks/."""

from benchmarks.common import table, timeit
from benchmarks.model_bench import flops_per_face, throughput
from tests.conftest import tiny_config


def test_flops_are_counted_and_scale_with_input():
    small = flops_per_face(tiny_config())
    large = flops_per_face(tiny_config(input_size=128))
    assert small > 0
    assert 3.5 < large / small < 4.5  # four times the pixels


def test_throughput_and_table():
    assert throughput(tiny_config(), "fp32", 2) > 0
    assert timeit(lambda: None, min_time=0.0) >= 0
    text = table(["a", "b"], [[1, 2.5]])
    assert text.splitlines()[2] == "| 1 | 2.5 |"
