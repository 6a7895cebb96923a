"""docker-compose.yml: valid (Debian's docker-compose checks it; no Docker engine here), and every
service runs a command and settings this CLI accepts."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import ROOT


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (make test installs it)")
def test_compose_file_is_valid() -> None:
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_every_service_command_parses_and_its_settings_exist() -> None:
    from catalens.config import Settings
    from cli.main import build_parser

    services = compose()["services"]
    assert {"indexer", "api"} <= set(services)
    fields = {f"CATALENS_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        args = build_parser().parse_args(service["command"])  # argparse exits on an unknown flag
        assert callable(args.handler), name
        unknown = {key for key in service.get("environment", {}) if key.startswith("CATALENS_")} - fields
        assert not unknown, f"{name}: settings Catalens does not read: {unknown}"
    assert services["api"]["command"][0] == "serve" and services["indexer"]["command"][:2] == ["index", "build"]
    assert (ROOT / "Dockerfile").is_file()


def test_the_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    packages = {pattern.rstrip("*") for pattern in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert packages <= copied, f"the image would lack {sorted(packages - copied)}"
