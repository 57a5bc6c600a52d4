"""Admin console (virtual database `tidegate`) and the HTTP endpoints.

Against the PgBouncer stand-in the console is PgBouncer's (`pgbouncer` database): the SHOW commands
run there too; Tidegate-only expectations are marked.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

import psycopg
import pytest

import tgharness as h
psql = h.psql

# ---- Column names assumed for Tidegate's SHOW CLIENTS (lookup is by name; adjust here). -------
CLIENT_USER_COLS = ("user",)
CLIENT_DB_COLS = ("database",)
CLIENT_STATE_COLS = ("state",)
CLIENT_PINNED_COLS = ("pinned",)  # boolean-ish: t / true / yes / 1
CLIENT_PIN_REASON_COLS = ("pin_reason",)  # text naming the cause, e.g. "LISTEN"
CLIENT_APPNAME_COLS = ("application_name",)  # how the test finds its own clients ...
CLIENT_PORT_COLS = ("port", "client_port", "remote_port")  # ... or by the client's local port
CLIENT_ADDRESS_COLS = ("address", "addr")  # ... or "host:port"
# -------------------------------------------------------------------------------------------------

SHOW_COMMANDS = ["POOLS", "CLIENTS", "SERVERS", "STATS", "CONFIG"]
TRUTHY = {"t", "true", "yes", "y", "1", "on"}


def admin_dsn(proxy: h.Proxy, user: str = "tidegate") -> str:
    return proxy.dsn(proxy.admin_db, user)


def col(names: list[str], candidates: tuple[str, ...]) -> int | None:
    for c in candidates:
        if c in names:
            return names.index(c)
    return None


def show(proxy: h.Proxy, what: str) -> tuple[list[str], list[tuple]]:
    with psycopg.connect(admin_dsn(proxy), autocommit=True) as c:
        cur = c.execute(f"SHOW {what}")  # no parameters: simple query protocol
        assert cur.description is not None, f"SHOW {what} returned no row description"
        return [d.name for d in cur.description], cur.fetchall()


@pytest.mark.parametrize("what", SHOW_COMMANDS)
def test_show_commands_psycopg(proxy, what):
    with psycopg.connect(proxy.dsn(application_name="tg-it-admin"), autocommit=True) as busy:
        busy.execute("select 1")
        names, rows = show(proxy, what)
    assert names and all(names), names
    if what in ("POOLS", "CLIENTS", "CONFIG"):
        assert rows, f"SHOW {what} returned no rows while a client was connected"
    if what == "CLIENTS":
        u, d = col(names, CLIENT_USER_COLS), col(names, CLIENT_DB_COLS)
        assert u is not None and d is not None, f"SHOW CLIENTS columns: {names}"
        assert any(r[u] == "tidegate" and r[d] == "market" for r in rows), rows
    if what == "POOLS":
        d = col(names, ("database",))
        assert d is not None, f"SHOW POOLS columns: {names}"
        assert any(r[d] == "market" for r in rows), rows


@pytest.mark.parametrize("what", ["POOLS", "CLIENTS", "CONFIG"])
def test_show_commands_psql(proxy, what):
    r = psql(proxy.host, proxy.port, ["-c", f"SHOW {what}"], db=proxy.admin_db)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert re.search(r"\(\d+ rows?\)", out), out
    r = psql(proxy.host, proxy.port, ["-At", "-c", f"SHOW {what}"], db=proxy.admin_db)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr.decode()


@pytest.mark.pgbouncer_xfail("PgBouncer answers unknown admin commands with 08P01")
@pytest.mark.parametrize("command", ["SHOW NONSENSE", "FROBNICATE THE POOL"])
def test_unknown_admin_command(proxy, command):
    with psycopg.connect(admin_dsn(proxy), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(command)
        e = ei.value
        assert e.sqlstate in ("42601", "0A000"), (e.sqlstate, str(e))
        assert e.diag.severity == "ERROR", e.diag.severity
        # an ERROR, not FATAL: the console session goes on
        assert c.execute("SHOW POOLS").description is not None


@pytest.mark.pgbouncer_xfail("PgBouncer refuses non-admin users with 08P01 'not allowed'")
def test_admin_refuses_non_admin_user(proxy):
    with h.RawConn(proxy.host, proxy.port) as r:
        out = r.startup("tg_md5", proxy.admin_db, password="tg_md5")
    assert out.end == "error", out.describe()
    e = out.errors[-1]
    assert e["S"] == "FATAL" and e["C"] in ("28000", "42501"), e
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(admin_dsn(proxy, "tg_md5")).close()


def _local_port(conn: psycopg.Connection) -> int:
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def _find_client(names, rows, appname, port):
    a = col(names, CLIENT_APPNAME_COLS)
    if a is not None:
        hit = [r for r in rows if r[a] == appname]
        if hit:
            return hit[0]
    p = col(names, CLIENT_PORT_COLS)
    if p is not None:
        hit = [r for r in rows if str(r[p]) == str(port)]
        if hit:
            return hit[0]
    ad = col(names, CLIENT_ADDRESS_COLS)
    if ad is not None:
        hit = [r for r in rows if str(r[ad] or "").endswith(f":{port}")]
        if hit:
            return hit[0]
    raise AssertionError(f"client {appname} (local port {port}) not found in SHOW CLIENTS; "
                         f"columns {names}; rows {rows}")


def _is_pinned(names, row) -> tuple[bool, str]:
    pc, rc = col(names, CLIENT_PINNED_COLS), col(names, CLIENT_PIN_REASON_COLS)
    assert pc is not None or rc is not None, \
        f"SHOW CLIENTS has none of {CLIENT_PINNED_COLS + CLIENT_PIN_REASON_COLS}: {names}"
    reason = str(row[rc] or "") if rc is not None else ""
    if pc is not None:
        v = row[pc]
        pinned = v is True or str(v).strip().lower() in TRUTHY
    else:
        pinned = bool(reason.strip())
    return pinned, reason


@pytest.mark.requires_tidegate("pinning is reported by Tidegate's SHOW CLIENTS")
def test_show_clients_reports_listen_pin(proxy):
    tag = secrets.token_hex(3)
    with psycopg.connect(proxy.dsn(application_name=f"tg-it-pinned-{tag}"), autocommit=True) as pinned, \
            psycopg.connect(proxy.dsn(application_name=f"tg-it-free-{tag}"), autocommit=True) as free:
        free.execute("select 1")
        pinned.execute(f"LISTEN tg_it_pin_{tag}")
        names, rows = show(proxy, "CLIENTS")
        row = _find_client(names, rows, f"tg-it-pinned-{tag}", _local_port(pinned))
        is_pinned, reason = _is_pinned(names, row)
        assert is_pinned, f"LISTEN client not reported pinned: {dict(zip(names, row))}"
        if col(names, CLIENT_PIN_REASON_COLS) is not None:
            assert "listen" in reason.lower(), reason
        free_row = _find_client(names, rows, f"tg-it-free-{tag}", _local_port(free))
        assert not _is_pinned(names, free_row)[0], dict(zip(names, free_row))
        for cands in (CLIENT_USER_COLS, CLIENT_DB_COLS, CLIENT_STATE_COLS):
            assert col(names, cands) is not None, f"SHOW CLIENTS lacks {cands}: {names}"
        assert row[col(names, CLIENT_USER_COLS)] == "tidegate"
        assert row[col(names, CLIENT_DB_COLS)] == "market"


# --------------------------------------------------------------------------------------------
# HTTP


def _http(proxy: h.Proxy, path: str):
    if proxy.http is None:
        pytest.skip("no HTTP endpoint known (set TIDEGATE_HTTP_HOSTPORT with TIDEGATE_URL_HOSTPORT)")
    return h.http_get(proxy.http[0], proxy.http[1], path)


@pytest.mark.requires_tidegate("PgBouncer has no HTTP endpoints")
def test_metrics(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        for _ in range(5):
            c.execute("select 1")
    status, headers, body = _http(proxy, "/metrics")
    assert status == 200, (status, body[:500])
    assert headers.get("content-type", "").startswith("text/plain"), headers
    text = body.decode()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? \S+", text, re.M))
    ours = sorted(n for n in names if n.startswith(("tidegate_", "db_client_")))
    assert ours, f"no tidegate_* / db_client_* samples in /metrics:\n{text[:2000]}"
    assert "# TYPE " in text, text[:1000]


@pytest.mark.requires_tidegate("PgBouncer has no HTTP endpoints")
def test_healthz(proxy):
    status, _, body = _http(proxy, "/healthz")
    assert status == 200, (status, body[:500])


@pytest.mark.requires_tidegate("PgBouncer has no HTTP endpoints")
def test_readyz_with_lab_up(proxy):
    status, _, body = _http(proxy, "/readyz")
    assert status == 200, (status, body[:500])


@pytest.mark.requires_tidegate("PgBouncer has no HTTP endpoints")
def test_http_unknown_path(proxy):
    status, _, _ = _http(proxy, "/tg-it-no-such-page")
    assert status == 404
