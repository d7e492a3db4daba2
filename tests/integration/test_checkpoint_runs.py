import os

from self_rewarding_lm_pytorch.storage.integrity import remove_stale_temp_files


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    """Under 1 s idle."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".stage.pt.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"half")
    mine = tmp_path / f".other.pt.tmp-{os.getpid()}"
    mine.write_bytes(b"in progress")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert mine.exists() and not stale.exists()
