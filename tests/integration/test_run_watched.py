"""`run_watched` (tests/helpers.py), the way tests run subprocesses: killed for silence, never for slowness."""

import os
import sys
import time

import pytest
from helpers import HungProcess, run_watched

SLOW_TALKER = "import time\nfor i in range(6):\n    print(i)\n    time.sleep(0.5)"
SILENT_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started")
time.sleep(120)
"""


def test_a_run_longer_than_the_silence_limit_that_keeps_printing_ends_normally():
    """About 4 s: 3 s of output, a line every 0.5 s, under a 2 s silence limit."""
    run = run_watched([sys.executable, "-c", SLOW_TALKER], silence_s=2)
    assert run.returncode == 0 and run.stdout.split() == [str(i) for i in range(6)], run.stderr


def test_a_silent_run_is_killed_with_its_children_and_reported_as_hung(tmp_path):
    """About 3 s: a child that prints once, starts a grandchild and sleeps is killed after 2 s of silence, the
    grandchild with it (torchrun's workers are such grandchildren), and the error shows the last output."""
    pid_file = tmp_path / "grandchild.pid"
    with pytest.raises(HungProcess, match=r"wrote nothing for 2 s and was killed as hung(.|\n)*started"):
        run_watched([sys.executable, "-c", SILENT_PARENT, str(pid_file)], silence_s=2)
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reparented to init once its parent is gone, and reaped there
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the grandchild {grandchild} outlived the kill")
