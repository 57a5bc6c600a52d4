"""`tidegate migrate` on the lab's plain PostgreSQL: every test gets a scratch database (created by
the superuser, owned by `tidegate`, dropped afterwards) and runs the real binary against the lab
primary with a generated config (the suite's single-node config), as an operator would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("tidegate migrate")

MIGRATIONS = h.REPO / "migrations"
LOCK_KEY = 7233884151


def superuser() -> psycopg.Connection:
    return psycopg.connect(h.make_dsn(h.HOST, h.PRIMARY_PORT, "postgres", "postgres"), autocommit=True)


@pytest.fixture
def scratch_db(lab: None):
    name = h.unique_name("tg_it_mig")
    with superuser() as c:
        c.execute(f'create database "{name}" owner tidegate')
    try:
        yield name
    finally:
        with superuser() as c:
            c.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tidegate.yaml"
    path.write_text(yaml.safe_dump(h.tidegate_config(h.allocate_port("pg"), 0), sort_keys=False))
    return path


def migrate(config: Path, db: str, *args: str, directory: Path = MIGRATIONS) -> subprocess.CompletedProcess:
    binary = h.tidegate_binary()
    if not binary.exists():
        pytest.skip(f"Tidegate binary not found at {binary} (swift build)")
    return subprocess.run([str(binary), "migrate", "--config", str(config), "--database", db, "--dir",
                           str(directory), *args], capture_output=True, text=True, timeout=120,
                          env=h._child_env())


def db_conn(db: str) -> psycopg.Connection:
    return psycopg.connect(h.direct_dsn(db=db), autocommit=True)


def applied(db: str) -> list[tuple]:
    with db_conn(db) as c:
        return c.execute("select version, name, flavour from tidegate_schema_migrations order by version").fetchall()


def test_migrate_twice_is_a_no_op_the_second_time(config_file, scratch_db):
    dry = migrate(config_file, scratch_db, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "postgres flavour" in dry.stdout and "would apply" in dry.stdout, dry.stdout
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tidegate_schema_migrations')").fetchone() == (None,), \
            "--dry-run changed the database"

    first = migrate(config_file, scratch_db)
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in MIGRATIONS.glob("*.sql") if ".timescaledb." not in p.name)
    assert f"0 already applied, applied {len(files)}" in first.stdout, first.stdout
    rows = applied(scratch_db)
    assert [r[0] for r in rows] == sorted({int(f.split("_")[0]) for f in files})
    assert {r[2] for r in rows} == {"postgres"}

    second = migrate(config_file, scratch_db)
    assert second.returncode == 0, second.stderr
    assert f"{len(rows)} already applied, applied 0" in second.stdout, second.stdout
    assert applied(scratch_db) == rows


def test_schema_rejects_bad_data_and_duplicates(config_file, scratch_db):
    assert migrate(config_file, scratch_db).returncode == 0
    with db_conn(scratch_db) as c:
        c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                  "values (now(), 'AAPL', 190.5, 100, 'XNAS', 1)")
        # A row for a day without its own partition lands in the default partition.
        c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                  "values ('2001-02-03 10:00+00', 'AAPL', 1.5, 1, 'XNAS', 2)")
        for bad, sqlstate in (
            ("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
             "values (now(), 'AAPL', 0, 100, 'XNAS', 3)", "23514"),          # price > 0
            ("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
             "values (now(), 'AAPL', 1, -1, 'XNAS', 4)", "23514"),           # size >= 0
            ("insert into quotes (ts, symbol, bid, ask, bid_size, ask_size) "
             "values (now(), 'AAPL', 2, 1, 1, 1)", "23514"),                 # bid <= ask
        ):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(bad)
            assert ei.value.sqlstate == sqlstate, (bad, ei.value)
        row = c.execute("select ts, symbol, trade_id from ticks where trade_id = 1").fetchone()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                      "values (%s, %s, 191, 1, 'XNAS', %s)", row)
        where = dict(c.execute("select trade_id, tableoid::regclass::text from ticks").fetchall())
        assert where[1].startswith("ticks_p") and where[2] == "ticks_default", where


def test_edited_migration_is_refused(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    assert migrate(config_file, scratch_db, directory=directory).returncode == 0
    edited = next(p for p in sorted(directory.glob("*.postgres.sql")))
    edited.write_text(edited.read_text() + "\n-- edited after it was applied\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{edited.name} changed after it was applied" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Fatal error" not in r.stderr, r.stderr


def test_failing_migration_is_rolled_back_and_reported(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9001_half_done.sql").write_text(
        "create table tg_half_done (x int);\ninsert into tg_half_done values (1);\nselect 1 / 0;\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "9001_half_done.sql failed and was rolled back" in r.stderr and "22012" in r.stderr, r.stderr
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tg_half_done')").fetchone() == (None,)
    assert 9001 not in [v for v, _, _ in applied(scratch_db)]
    # The migrations before it are applied and recorded; fixing the file lets the run finish.
    (directory / "9001_half_done.sql").write_text("create table tg_half_done (x int);\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 0 and "applied 1" in r.stdout, (r.stdout, r.stderr)


def test_transaction_control_in_a_file_is_refused(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9002_commits.sql").write_text("create table a (x int);\ncommit;\ncreate table b (x int);\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1 and "9002_commits.sql: transaction control" in r.stderr, (r.stdout, r.stderr)
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tidegate_schema_migrations')").fetchone() == (None,), \
            "nothing may be applied when a file is refused"


def test_two_runs_at_once_are_refused(config_file, scratch_db):
    with db_conn(scratch_db) as holder:
        holder.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        r = migrate(config_file, scratch_db)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "another tidegate migrate is running" in r.stderr, r.stderr
    assert migrate(config_file, scratch_db).returncode == 0


def test_target_applies_up_to_a_version(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9003_later.sql").write_text("create table tg_later (x int);\n")
    first_version = min(int(p.name.split("_")[0]) for p in MIGRATIONS.glob("*.sql"))
    r = migrate(config_file, scratch_db, "--target", str(first_version), directory=directory)
    assert r.returncode == 0, r.stderr
    assert [v for v, _, _ in applied(scratch_db)] == [first_version]
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 0, r.stderr
    assert [v for v, _, _ in applied(scratch_db)][-1] == 9003
    r = migrate(config_file, scratch_db, "--target", str(first_version), directory=directory)
    assert r.returncode == 1 and "only go forward" in r.stderr, (r.stdout, r.stderr)
