"""docker-compose.yml validates (no Docker engine here: Debian's docker-compose v1 checks it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (make test installs it)")
def test_compose_file_is_valid() -> None:
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_services_run_the_same_commands_we_test() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "catalens" in text and "index" in text and "serve" in text
    assert (ROOT / "Dockerfile").is_file()
