"""The schema comes only from Alembic: upgrade head, downgrade base, upgrade again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from catalens.db import create_db_engine, downgrade_database, upgrade_database
from catalens.schema import Base
from tests.support import run_cli


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend the schema must hold on."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create()
    return f"sqlite:///{tmp_path / 'm.db'}"


@pytest.mark.reliability
def test_row18_upgrade_downgrade_upgrade(url: str) -> None:
    upgrade_database(url)
    engine = create_db_engine(url)
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    downgrade_database(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_database(url)
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)


def test_migrations_match_the_models(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade_database(url)
    with create_db_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], "a model changed without a migration: run alembic revision --autogenerate"


@pytest.mark.slow
def test_cli_db_upgrade_creates_the_schema_and_wal(tmp_path: Path) -> None:
    result = run_cli("db", "upgrade", "--index-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine = create_db_engine(f"sqlite:///{tmp_path / 'catalens.db'}")
    assert "products" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
