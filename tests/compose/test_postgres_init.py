"""deploy/postgres/init-databases.sh, the script the postgres image runs on first start, run
here against the local PostgreSQL with throwaway names."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"
PG_ENV = {
    "PGHOST": os.environ.get("PGHOST", "127.0.0.1"),
    "PGPORT": os.environ.get("PGPORT", "5432"),
    "POSTGRES_USER": os.environ.get("PGUSER", "postgres"),
}


def _psql(sql: str, *, user: str, database: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database, "-c", sql],
        env={**os.environ, **PG_ENV},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def names():
    if shutil.which("psql") is None:
        pytest.fail("psql is needed to run the init script")
    run = secrets.token_hex(3)
    names = [f"t{run}_payment", f"t{run}_points"]
    yield names
    admin = PG_ENV["POSTGRES_USER"]
    for name in names:
        _psql(f'DROP DATABASE IF EXISTS "{name}"', user=admin, database="postgres")
        _psql(f'DROP ROLE IF EXISTS "{name}"', user=admin, database="postgres")


def test_one_database_and_role_per_service_each_closed_to_the_others(names):
    env = {**os.environ, **PG_ENV, "POSTGRES_DATABASES": " ".join(names)}
    for name in names:
        env[f"POSTGRES_{name.upper()}_PASSWORD"] = secrets.token_urlsafe(12)
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

    first, second = names
    owner = _psql(
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{first}'",
        user=PG_ENV["POSTGRES_USER"],
        database="postgres",
    )
    assert owner.stdout.strip() == first
    own = _psql("CREATE TABLE t (x int); SELECT current_database()", user=first, database=first)
    assert own.returncode == 0, own.stderr
    assert own.stdout.splitlines()[-1] == first
    other = _psql("SELECT 1", user=first, database=second)
    assert other.returncode != 0 and "permission denied" in other.stderr


def test_a_missing_password_stops_the_script(names):
    env = {**os.environ, **PG_ENV, "POSTGRES_DATABASES": names[0]}
    env.pop(f"POSTGRES_{names[0].upper()}_PASSWORD", None)
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and f"POSTGRES_{names[0].upper()}_PASSWORD" in result.stderr
