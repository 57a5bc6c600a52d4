"""Real clients against the proxy: psql and pgbench (compared with direct access where possible)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

import tgharness as h

PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
psql = h.psql
_client_env = h.client_env


def both(args: list[str], **kw):
    p = h.active_proxy()
    return psql(h.HOST, h.PRIMARY_PORT, args, **kw), psql(p.host, p.port, args, **kw)


def _same_run(d: subprocess.CompletedProcess, p: subprocess.CompletedProcess, what: str) -> None:
    h.assert_same(
        {"rc": d.returncode, "stdout": d.stdout.decode(), "stderr": d.stderr.decode()},
        {"rc": p.returncode, "stdout": p.stdout.decode(), "stderr": p.stderr.decode()}, what)


def test_psql_command(proxy):
    d, p = both(["-At", "-v", "ON_ERROR_STOP=1", "-c", "select 1, 'two', null::int, '😀'",
                 "-c", "select current_user, current_database()", "-c", "show TimeZone"])
    _same_run(d, p, "psql -c")
    assert p.returncode == 0
    assert p.stdout.decode().splitlines() == ["1|two||😀", "tidegate|market", "UTC"]


def test_psql_script_with_copy(proxy, tmp_path):
    table = h.unique_name("tg_it_psql")
    data = tmp_path / "in.tsv"
    data.write_bytes(b"3\tthree\t2024-03-10 07:00:00+00\t\\\\x41\n"
                     b"4\tf\xc3\xbcnf\t\\N\t\\N\n"
                     b"5\ttab\\there\t2024-06-01 00:00:00+05:30\t\\\\x\n")
    script = tmp_path / "script.sql"
    script.write_text(f"""\\pset null '<null>'
set timezone = 'America/New_York';
create table {table} (id int primary key, t text, ts timestamptz, b bytea);
insert into {table} values (1, 'one', '2024-01-01 00:00+00', '\\x00ff'), (2, 'two', null, null);
\\copy {table} from '{data}'
\\copy {table} from stdin
6	inline	2024-12-31 23:59:59+00	\\\\x0102
7	\\N	\\N	\\N
\\.
select * from {table} order by id;
\\copy (select * from {table} order by id) to '{tmp_path}/out.csv' with (format csv, header)
\\copy {table} to stdout
select count(*) as n from {table} \\gset
\\echo count=:n
begin;
update {table} set t = upper(t) where id < 3;
select id, t from {table} order by id;
rollback;
\\x on
select * from {table} where id = 1;
\\x off
\\d {table}
drop table {table};
""")
    d = psql(h.HOST, h.PRIMARY_PORT, ["-v", "ON_ERROR_STOP=1", "-f", str(script)])
    d_csv = (tmp_path / "out.csv").read_bytes()
    (tmp_path / "out.csv").unlink()
    p = psql(proxy.host, proxy.port, ["-v", "ON_ERROR_STOP=1", "-f", str(script)])
    p_csv = (tmp_path / "out.csv").read_bytes() if (tmp_path / "out.csv").exists() else b""
    _same_run(d, p, "psql -f script")
    assert d.returncode == 0, d.stderr.decode()
    assert d_csv == p_csv
    out = d.stdout.decode()
    assert "count=7" in out and "COPY 3" in out and "COPY 2" in out


@pytest.mark.parametrize("stop", [True, False], ids=["ON_ERROR_STOP", "continue"])
def test_psql_on_error_stop(proxy, tmp_path, stop):
    script = tmp_path / "err.sql"
    script.write_text("select 'before' as marker;\nselect 1/0;\nselec typo;\nselect 'after' as marker;\n")
    args = ["-v", f"ON_ERROR_STOP={1 if stop else 0}", "-f", str(script)]
    d, p = both(args)
    _same_run(d, p, "psql ON_ERROR_STOP")
    out = p.stdout.decode()
    err = p.stderr.decode()
    assert "before" in out and "division by zero" in err
    if stop:
        assert p.returncode == 3 and "after" not in out
    else:
        assert p.returncode == 0 and "after" in out and "syntax error" in err


def test_psql_single_transaction(proxy, tmp_path, scratch_table):
    t = scratch_table("id int primary key")
    script = tmp_path / "one.sql"
    script.write_text(f"insert into {t} values (1);\ninsert into {t} values (1);\n")
    d, p = both(["-1", "-v", "ON_ERROR_STOP=1", "-f", str(script)])
    _same_run(d, p, "psql -1")
    assert p.returncode == 3
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        assert c.execute(f"select count(*) from {t}").fetchone() == (0,)


# --------------------------------------------------------------------------------------------
# pgbench


@pytest.fixture(scope="module")
def bench_db(lab):
    if not Path(PGBENCH).exists():
        pytest.skip("pgbench not installed")
    with psycopg.connect(h.direct_dsn("postgres", "postgres"), autocommit=True) as c:
        if not c.execute("select 1 from pg_database where datname = 'bench'").fetchone():
            c.execute("create database bench owner tidegate")
    r = subprocess.run([PGBENCH, "-i", "-s", "1", "-q", "-h", h.HOST, "-p", str(h.PRIMARY_PORT),
                        "-U", "tidegate", "bench"], capture_output=True, timeout=120,
                       env=_client_env())
    assert r.returncode == 0, r.stderr.decode()
    return "bench"


@pytest.mark.parametrize("protocol", [
    "simple", "extended",
    pytest.param("prepared", marks=pytest.mark.pgbouncer_xfail(
        "pgbench -M prepared uses named statements per connection; transaction pooling without "
        "prepared-statement tracking fails (prepared statement \"P_0\" already exists / does not exist)")),
])
def test_pgbench(proxy, bench_db, protocol):
    r = subprocess.run([PGBENCH, "-n", "-c", "8", "-j", "2", "-T", "5", "-M", protocol,
                        "-h", proxy.host, "-p", str(proxy.port), "-U", "tidegate", bench_db],
                       capture_output=True, timeout=60, env=_client_env())
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, f"pgbench exit {r.returncode}\n{out}\n{err}"
    assert "error" not in err.lower(), err
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m and int(m.group(1)) == 0, out
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m and int(m.group(1)) > 0, out
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    assert m and float(m.group(1)) > 0, out
