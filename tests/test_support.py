"""tests/support/server.py's process accounting, which the benchmarks and the load tests read."""

import os
import subprocess
import sys
import time

from tests.support.server import host_jiffies, process_tree, tree_cpu_seconds


def test_process_tree_cpu_counts_children_and_host_busy_share():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        busy0, total0 = host_jiffies()
        deadline = time.monotonic() + 20
        while tree_cpu_seconds(child.pid) < 0.25:  # its busy loop, counted from /proc
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert child.pid in process_tree(os.getpid())
        assert tree_cpu_seconds(os.getpid()) >= tree_cpu_seconds(child.pid)  # the parent's sum includes it
        busy1, total1 = host_jiffies()
        assert 0 < busy1 - busy0 <= total1 - total0
    finally:
        child.kill()
        child.wait()
