"""`mypy --strict` passes over the native module's stubs (`_core.pyi`) and the pure-Python
layer, with the configuration in pyproject.toml (mypy is installed by scripts/venv.sh)."""

import pathlib
import subprocess
import sys

import pytest

CRATE = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_mypy_strict_passes_over_the_stubs_and_the_layer(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: pip install mypy (scripts/venv.sh does)")
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(CRATE / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "mypy-cache"),
            str(CRATE / "python" / "consort"),
        ],
        cwd=CRATE,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout, proc.stdout
