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
@pytest.mark.parametrize("profile", [[], ["--profile", "scale"]], ids=["default", "scale"])
def test_compose_file_is_valid(profile: list[str]) -> None:
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_scale_profile_runs_every_engine_and_two_replicas() -> None:
    from catalens.config import Settings

    services = compose()["services"]
    scale = {name for name, service in services.items() if "scale" in service.get("profiles", [])}
    assert {"postgres", "etcd", "minio", "milvus", "ray-head", "ray-worker", "indexer-scale", "api-1",
            "api-2"} <= scale
    assert not {"indexer", "api"} & scale, "the default (SQLite + FAISS) stays without a profile"
    for name in ("indexer-scale", "api-1", "api-2"):
        env = Settings.model_validate({k.removeprefix("CATALENS_").lower(): _defaults(v)
                                       for k, v in services[name]["environment"].items()
                                       if k.startswith("CATALENS_")})
        assert env.milvus and env.db_url.startswith("postgresql+psycopg://"), name
    assert services["indexer-scale"]["command"][-4:-2] == ["--engine", "ray"]


def _defaults(value: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default, as with nothing set."""
    import re

    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_every_service_command_parses_and_its_settings_exist() -> None:
    from catalens.config import Settings
    from cli.main import build_parser

    services = compose()["services"]
    assert {"indexer", "api"} <= set(services)
    fields = {f"CATALENS_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        if "entrypoint" in service or not service.get("image", "").startswith("catalens"):
            continue  # another program: Ray's own CLI in the catalens image, or another image
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
