"""The worked example ``examples/inside_jax_model.py`` runs at small size and writes its figure."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "inside_jax_model.py"


def test_example_runs_small_and_writes_a_png(tmp_path):
    out = tmp_path / "flow.png"
    env = dict(os.environ, JAXGMM_EXAMPLE_SMALL="1", MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "300 points" in done.stdout  # the small size was used
    assert f"wrote {out}" in done.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = dict(
        line.strip().rsplit(None, 1) for line in done.stdout.splitlines() if line.startswith("  ")
    )
    lines = {name.strip(): float(value) for name, value in lines.items()}
    # even the short run beats spherical EM on the raw data, the point of the flow
    assert lines["flow (spherical base)"] > lines["EM, spherical on x"]
