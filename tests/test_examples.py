"""Every script in examples/ runs at its small size (JAXGMM_EXAMPLE_SMALL=1) and writes its
figure. The scripts run side by side in subprocesses, as a user would run them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = (
    "digits.py",
    "segment_image.py",
    "density_1d.py",
    "ellipses_2d.py",
    "speaker_verification.py",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Start all examples at once, wait for all; returns {script: (process, stdout, figure)}."""
    folder = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "JAXGMM_EXAMPLE_SMALL": "1", "JAXGMM_CACHE_DIR": ""}
    running = {}
    for script in SCRIPTS:
        figure = folder / (Path(script).stem + ".png")
        running[script] = (
            subprocess.Popen(
                [sys.executable, str(EXAMPLES / script), "--small", "--out", str(figure)],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            figure,
        )
    results = {}
    for script, (process, figure) in running.items():
        output, _ = process.communicate(timeout=600)
        results[script] = (process.returncode, output, figure)
    return results


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(finished, script):
    status, output, figure = finished[script]
    assert status == 0, output
    assert f"wrote {figure}" in output
    assert figure.stat().st_size > 5000  # a real figure, not an empty file
