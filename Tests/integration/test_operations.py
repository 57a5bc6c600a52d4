"""Operations: TLS, reload, graceful shutdown, timeouts, pool modes and limits, PAUSE/RESUME,
backend authentication variants, metrics.

Every test here starts its own Tidegate instance (`spawn_proxy`) with the config it needs, except
the ones that only read from the session proxy. Signals (SIGHUP, SIGTERM) go to the instance's
process, so these tests need a Tidegate the suite started itself.
"""

from __future__ import annotations

import copy
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

import tgharness as h

pytestmark = pytest.mark.requires_tidegate(
    "Tidegate config keys, signals, admin console columns and metrics")

TRUTHY = {"t", "true", "yes", "y", "1", "on"}


# --------------------------------------------------------------------------------------------
# helpers


def admin(proxy: h.Proxy, sql: str, **extra: Any) -> tuple[str | None, list[str], list[tuple]]:
    """Run one admin-console command; (command tag, column names, rows)."""
    with psycopg.connect(proxy.dsn(proxy.admin_db, "tidegate", **extra), autocommit=True) as c:
        cur = c.execute(sql)
        names = [d.name for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
        return cur.statusmessage, names, rows


def show_dicts(proxy: h.Proxy, what: str, **extra: Any) -> list[dict[str, Any]]:
    _, names, rows = admin(proxy, f"SHOW {what}", **extra)
    return [dict(zip(names, r)) for r in rows]


def show_config(proxy: h.Proxy) -> dict[str, str]:
    return {r["key"]: r["value"] for r in show_dicts(proxy, "CONFIG")}


def client_row(proxy: h.Proxy, appname: str, **extra: Any) -> dict[str, Any]:
    rows = show_dicts(proxy, "CLIENTS", **extra)
    mine = [r for r in rows if r.get("application_name") == appname]
    assert len(mine) == 1, f"SHOW CLIENTS: expected one client with application_name={appname!r}: {rows}"
    return mine[0]


def market_pool(proxy: h.Proxy, user: str = "tidegate") -> dict[str, Any]:
    rows = show_dicts(proxy, "POOLS")
    mine = [r for r in rows if r.get("database") == "market" and r.get("user") == user]
    assert mine, f"SHOW POOLS has no row for market/{user}: {rows}"
    return mine[0]


def write_config(proxy: h.Proxy, cfg: dict) -> None:
    import yaml  # type: ignore

    assert proxy.config_path is not None, "the instance has no config file written by the suite"
    tmp = proxy.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(proxy.config_path)


def can_login(proxy: h.Proxy, user: str, password: str | None = None) -> tuple[bool, str]:
    try:
        with psycopg.connect(proxy.dsn(user=user, password=password, connect_timeout=3),
                             autocommit=True) as c:
            got = c.execute("select current_user").fetchone()[0]
        return got == user, f"current_user={got}"
    except psycopg.Error as e:
        return False, f"{type(e).__name__} {e.sqlstate}: {e}"


def assert_alive(proxy: h.Proxy) -> None:
    assert proxy.process is not None and proxy.process.poll() is None, (
        f"{proxy.name} exited with {proxy.process.returncode if proxy.process else '?'}; "
        f"log:\n{proxy.log_tail(30)}")


def connect_fails(proxy: h.Proxy) -> str | None:
    """None if a new client can log in and query; else how it failed."""
    try:
        with psycopg.connect(proxy.dsn(connect_timeout=2), autocommit=True) as c:
            c.execute("select 1")
        return None
    except psycopg.Error as e:
        return f"{type(e).__name__} {e.sqlstate}: {str(e).strip()[:200]}"


# --------------------------------------------------------------------------------------------
# 1. TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("the openssl CLI is not installed (needed to make a self-signed certificate)")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    r = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return cert, key


def test_tls(spawn_proxy, tls_files):
    cert, key = tls_files
    p = spawn_proxy({"listen.tls_certificate": str(cert), "listen.tls_private_key": str(key)}, "tls")
    with psycopg.connect(p.dsn(sslmode="require", application_name="tg-it-tls"), autocommit=True) as c:
        assert c.pgconn.ssl_in_use, "sslmode=require connected without TLS"
        assert c.execute("select 40 + 2").fetchone()[0] == 42
        big = c.execute("select repeat('x', 200000)").fetchone()[0]
        assert len(big) == 200000
        row = client_row(p, "tg-it-tls", sslmode="disable")
        assert str(row.get("tls")).lower() in TRUTHY, f"SHOW CLIENTS tls for the TLS client: {row}"
    with psycopg.connect(p.dsn(sslmode="disable", application_name="tg-it-plain"), autocommit=True) as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("select 1").fetchone()[0] == 1
        row = client_row(p, "tg-it-plain", sslmode="require")
        assert str(row.get("tls")).lower() not in TRUTHY, f"SHOW CLIENTS tls for the plaintext client: {row}"

    # SSLRequest and plaintext startup in the same send(): the startup bytes were not encrypted
    # (CVE-2021-23214 style injection). Expect FATAL 08P01 or a plain close, never a login.
    with h.RawConn(p.host, p.port) as rc:
        rc.send(h.ssl_request() + h.startup_packet({"user": "tidegate", "database": "market"}))
        data = b""
        end = "closed"
        deadline = time.monotonic() + 5
        try:
            while True:
                rc.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = rc.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, TimeoutError):
            end = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            end = "reset"
    print(f"SSLRequest + plaintext startup in one send: got {data[:120]!r}, end={end}")
    assert end != "timeout", f"proxy neither answered nor closed within 5 s (got {data[:80]!r})"
    rest = data[1:] if data[:1] == b"S" else data
    if rest:
        assert rest[:1] == b"E", f"expected an ErrorResponse (or close), got {data[:80]!r} end={end}"
        (length,) = struct.unpack("!i", rest[1:5])
        fields = h.parse_fields(rest[5:1 + length])
        assert fields.get("C") == "08P01", fields
        assert fields.get("S") == "FATAL", fields
        assert rest[1 + length:] == b"", f"bytes after the FATAL error: {rest[1 + length:][:80]!r}"
    assert_alive(p)
    assert connect_fails(p) is None


# --------------------------------------------------------------------------------------------
# 2. Reload


def test_reload_keeps_clients(spawn_proxy):
    p = spawn_proxy({}, "reload")
    base = copy.deepcopy(p.config)
    with psycopg.connect(p.dsn(application_name="tg-it-keep"), autocommit=True) as a:
        a.execute("set application_name = 'tg-it-keep-2'")
        assert a.execute("select 1").fetchone()[0] == 1

        # Remove tg_md5; RELOAD from the console: new logins as tg_md5 fail, A goes on.
        no_md5 = copy.deepcopy(base)
        no_md5["users"].pop("tg_md5", None)
        write_config(p, no_md5)
        tag, _, _ = admin(p, "RELOAD")
        assert tag == "RELOAD", f"RELOAD command tag: {tag!r}"
        ok, why = can_login(p, "tg_md5")
        assert not ok, f"tg_md5 could still log in after it was removed and RELOAD: {why}"
        assert a.execute("select 2").fetchone()[0] == 2

        # Add it back and change pool.max_size; SIGHUP.
        with_md5 = copy.deepcopy(base)
        with_md5.setdefault("pool", {})["max_size"] = 7
        write_config(p, with_md5)
        p.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        ok, why = can_login(p, "tg_md5")
        while not ok and time.monotonic() < deadline:
            time.sleep(0.2)
            ok, why = can_login(p, "tg_md5")
        assert ok, f"tg_md5 cannot log in within 5 s after SIGHUP: {why}"
        assert show_config(p).get("pool.max_size") == "7"
        # pool settings apply to the existing pool at once (README: "apply to new work at once")
        assert market_pool(p).get("max_size") == "7", market_pool(p)
        assert a.execute("select 3").fetchone()[0] == 3
        assert a.execute("show application_name").fetchone()[0] == "tg-it-keep-2"
        assert_alive(p)

        # Broken YAML: SIGHUP keeps the old config, the process stays up.
        p.config_path.write_text("listen: [this is: not valid\n  users: {{{\n")
        p.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert_alive(p)
        ok, why = can_login(p, "tg_md5")
        assert ok, f"tg_md5 login after a broken config + SIGHUP: {why}"
        ok, why = can_login(p, "tidegate")
        assert ok, f"tidegate login after a broken config + SIGHUP: {why}"
        assert show_config(p).get("pool.max_size") == "7"
        assert a.execute("select 4").fetchone()[0] == 4
        # RELOAD from the console with the broken file reports an error, the console still works.
        with pytest.raises(psycopg.Error):
            admin(p, "RELOAD")
        assert show_config(p).get("pool.max_size") == "7"
        assert_alive(p)


# --------------------------------------------------------------------------------------------
# 3. Graceful shutdown


def test_graceful_shutdown(spawn_proxy, scratch_table):
    table = scratch_table("id int primary key, note text")
    p = spawn_proxy({"shutdown_timeout_ms": 5000}, "shutdown")
    a = psycopg.connect(p.dsn(), autocommit=True)
    try:
        a.execute("begin")
        a.execute(f"insert into {table} values (1, 'during shutdown')")
        t0 = time.monotonic()
        p.process.send_signal(signal.SIGTERM)
        # New clients are refused from now on (give the signal a moment to be handled).
        failure = None
        while time.monotonic() - t0 < 2.0:
            failure = connect_fails(p)
            if failure:
                break
            time.sleep(0.1)
        assert failure, "a new client could still log in and query 2 s after SIGTERM"
        assert p.process.poll() is None, (
            f"Tidegate exited ({p.process.returncode}) while a transaction was open, "
            f"{time.monotonic() - t0:.2f} s after SIGTERM (shutdown_timeout_ms 5000)")
        # The open transaction may finish.
        assert a.execute("select count(*) from " + table).fetchone()[0] == 1
        a.execute("commit")
        assert time.monotonic() - t0 < 5.0
    finally:
        a.close()
    with psycopg.connect(h.direct_dsn(), autocommit=True) as d:
        rows = d.execute(f"select id, note from {table}").fetchall()
    assert rows == [(1, "during shutdown")], rows
    try:
        rc = p.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Tidegate still running 10 s after SIGTERM with no open transaction; "
                    f"log:\n{p.log_tail(20)}")
    assert rc == 0, f"exit status {rc} after SIGTERM; log:\n{p.log_tail(20)}"
    print(f"new-client failure during shutdown: {failure}")


# --------------------------------------------------------------------------------------------
# 4. Idle-in-transaction timeout


def test_idle_in_transaction_timeout(spawn_proxy):
    p = spawn_proxy({"limits.idle_in_transaction_timeout_ms": 500}, "idle-txn")
    c = psycopg.connect(p.dsn(), autocommit=True)
    try:
        c.execute("begin")
        c.execute("select 1")
        time.sleep(1.2)
        with pytest.raises(psycopg.Error) as ei:
            c.execute("select 2")
        e = ei.value
        if e.sqlstate is not None:
            assert e.sqlstate == "25P03", f"{e.sqlstate}: {e}"
        assert c.closed or c.broken or c.pgconn.status == pq.ConnStatus.BAD, \
            "the connection is still usable after the idle-in-transaction timeout"
    finally:
        c.close()
    # Idle outside a transaction is not affected.
    with psycopg.connect(p.dsn(), autocommit=True) as c2:
        c2.execute("select 1")
        time.sleep(0.8)
        assert c2.execute("select 2").fetchone()[0] == 2
        # A transaction that keeps working is not cut either.
        c2.execute("begin")
        for i in range(4):
            time.sleep(0.3)
            c2.execute("select %s::int", (i,))
        c2.execute("commit")
    assert_alive(p)


# --------------------------------------------------------------------------------------------
# 5. Session pooling


def test_session_pool_mode(spawn_proxy):
    p = spawn_proxy({"pool.mode": "session", "pool.max_size": 1, "pool.checkout_timeout_ms": 5000},
                    "session")
    tmp = h.unique_name("tg_tmp")
    with psycopg.connect(p.dsn(application_name="tg-it-session"), autocommit=True) as c:
        c.execute("prepare tg_sess_p(int) as select $1 + 1")
        c.execute(f"create temp table {tmp} (x int)")
        c.execute("set work_mem = '7MB'")
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        for i in range(5):
            c.execute("begin")
            c.execute(f"insert into {tmp} values (%s)", (i,))
            assert c.execute("execute tg_sess_p(%s)" % i).fetchone()[0] == i + 1
            c.execute("commit")
            assert c.execute("show work_mem").fetchone()[0] == "7MB"
            assert c.execute(f"select count(*) from {tmp}").fetchone()[0] == i + 1
            assert c.execute("select pg_backend_pid()").fetchone()[0] == pid
        pool = market_pool(p)
        assert int(pool["server_active"]) >= 1, f"session client idle between transactions: {pool}"
        row = client_row(p, "tg-it-session")
        assert row.get("server_id") not in (None, ""), f"session client has no server: {row}"
    # The single server connection is reused (or replaced) for the next client, without state.
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        assert c.execute("select to_regclass(%s)", (tmp,)).fetchone()[0] is None, \
            "the previous client's temporary table is visible to a new client"
        assert c.execute("show work_mem").fetchone()[0] != "7MB", "SET leaked to a new client"
        names = [r[0] for r in c.execute("select name from pg_prepared_statements").fetchall()]
        assert "tg_sess_p" not in names, f"PREPARE leaked to a new client: {names}"
    pool = market_pool(p)
    assert int(pool["server_active"]) == 0, f"after all clients left: {pool}"


# --------------------------------------------------------------------------------------------
# 6. Transaction pooling: temp table pins the client


def test_temp_table_pins_in_transaction_pooling(spawn_proxy):
    p = spawn_proxy({"pool.max_size": 2, "pool.checkout_timeout_ms": 10000}, "pin")
    tmp = h.unique_name("tg_tmp")
    stop = threading.Event()
    with psycopg.connect(p.dsn(application_name="tg-it-pinned"), autocommit=True) as x:
        x.execute(f"create temp table {tmp} (x int)")

        def other(i: int) -> None:
            with psycopg.connect(p.dsn(application_name=f"tg-it-other-{i}"), autocommit=True) as o:
                n = 0
                while not stop.is_set() and n < 400:
                    o.execute("begin")
                    assert o.execute("select %s::int", (n,)).fetchone()[0] == n
                    assert o.execute("select to_regclass(%s)", (tmp,)).fetchone()[0] is None
                    o.execute("commit")
                    n += 1

        errors: list[BaseException] = []
        threads = []
        for i in range(3):
            def wrap(i=i):
                try:
                    other(i)
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            t = threading.Thread(target=wrap, daemon=True)
            t.start()
            threads.append(t)
        try:
            time.sleep(0.2)
            for i in range(20):
                x.execute("begin")
                x.execute(f"insert into {tmp} values (%s)", (i,))
                assert x.execute(f"select count(*) from {tmp}").fetchone()[0] == i + 1
                x.execute("commit")
                assert x.execute(f"select max(x) from {tmp}").fetchone()[0] == i
            row = client_row(p, "tg-it-pinned")
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        assert not errors, f"other clients failed: {errors[:3]!r}"
        assert not any(t.is_alive() for t in threads), "other clients hung"
        assert str(row.get("pinned")).lower() in TRUTHY, f"SHOW CLIENTS: {row}"
        assert "temp" in str(row.get("pin_reason")).lower(), f"pin_reason: {row}"


# --------------------------------------------------------------------------------------------
# 7. Backend authentication variants


def test_backend_trust_auth(spawn_proxy):
    p = spawn_proxy({"auth.method": "trust", "users.tg_trust": {"password": ""}}, "trust")
    with psycopg.connect(p.dsn(user="tg_trust", password=""), autocommit=True) as c:
        assert c.execute("select current_user").fetchone()[0] == "tg_trust"
        assert c.execute("select session_user").fetchone()[0] == "tg_trust"


def test_backend_md5_auth(proxy):
    with psycopg.connect(proxy.dsn(user="tg_md5"), autocommit=True) as c:
        assert c.execute("select current_user").fetchone()[0] == "tg_md5"
        c.execute("begin")
        assert c.execute("select 1").fetchone()[0] == 1
        c.execute("commit")


def test_client_md5_auth(spawn_proxy):
    p = spawn_proxy({"auth.method": "md5"}, "md5")
    with h.RawConn(p.host, p.port) as rc:
        out = rc.startup("tg_md5", "market", "tg_md5")
        assert out.end == "ready", out.describe()
        auth = [struct_code(pl) for t, pl in out.messages if t == "R"]
        assert 5 in auth, f"expected AuthenticationMD5Password, got auth codes {auth}"
    with h.RawConn(p.host, p.port) as rc:
        out = rc.startup("tg_md5", "market", "wrong")
        assert out.end in ("error", "closed"), out.describe()
        assert [e.get("C") for e in out.errors] == ["28P01"], out.describe()
    with psycopg.connect(p.dsn(user="tidegate"), autocommit=True) as c:
        assert c.execute("select current_user").fetchone()[0] == "tidegate"


def struct_code(payload: bytes) -> int:
    return struct.unpack("!i", payload[:4])[0]


# --------------------------------------------------------------------------------------------
# 8. Pool limits


def test_pool_checkout_timeout(spawn_proxy):
    p = spawn_proxy({"pool.max_size": 2, "pool.checkout_timeout_ms": 1000}, "pool-limit")
    holders = [psycopg.connect(p.dsn(), autocommit=True) for _ in range(2)]
    try:
        for c in holders:
            c.execute("begin")
            c.execute("select 1")
        result: dict[str, Any] = {}

        def run_third() -> None:
            # Tidegate checks out a server connection while logging a client in, so the wait (and
            # the 53300) may come at login or at the first query; both count. A raw connection,
            # because libpq does not expose the SQLSTATE of an error during login.
            t0 = time.monotonic()
            with h.RawConn(p.host, p.port, timeout=5) as rc:
                out = rc.startup("tidegate", "market")
                if out.end == "ready":
                    result["logged_in"] = time.monotonic() - t0
                    rc.send(h.message(b"Q", b"select 1\0"))
                    out = rc.read_until_ready(timeout=5)
                result["elapsed"] = time.monotonic() - t0
                result["outcome"] = out.describe()
                if out.errors:
                    result["error"] = out.errors[0]

        t = threading.Thread(target=run_third, daemon=True)
        t.start()
        time.sleep(0.4)
        pool = market_pool(p)
        t.join(5)
        assert not t.is_alive(), "the third client neither failed nor finished within 5 s"
        assert "error" in result, f"third client's query succeeded with max_size 2 taken: {result}"
        e = result["error"]
        assert e.get("C") == "53300", result
        assert "pool" in e.get("M", "").lower(), f"message does not mention the pool: {result}"
        assert 0.8 <= result["elapsed"] <= 3.0, f"failed after {result['elapsed']:.2f} s (timeout 1 s)"
        assert pool.get("max_size") == "2", pool
        assert int(pool.get("clients_waiting") or 0) >= 1, f"SHOW POOLS while a client waits: {pool}"
        assert int(pool.get("server_active") or 0) == 2, pool
        print(f"third client: {result}")
    finally:
        for c in holders:
            try:
                c.execute("commit")
            except psycopg.Error:
                pass
            c.close()
    with psycopg.connect(p.dsn(connect_timeout=3), autocommit=True) as c:
        assert c.execute("select 5").fetchone()[0] == 5
    assert_alive(p)


# --------------------------------------------------------------------------------------------
# 9. PAUSE / RESUME


def test_pause_resume(spawn_proxy):
    p = spawn_proxy({}, "pause")
    with psycopg.connect(p.dsn(), autocommit=True) as c, \
            psycopg.connect(p.dsn(p.admin_db), autocommit=True) as adm:
        assert c.execute("select 1").fetchone()[0] == 1
        t0 = time.monotonic()
        cur = adm.execute("PAUSE")
        assert cur.statusmessage == "PAUSE", cur.statusmessage
        assert time.monotonic() - t0 < 2.0, "PAUSE took long with no transaction open"
        result: dict[str, Any] = {}

        def query() -> None:
            try:
                result["value"] = c.execute("select 42").fetchone()[0]
            except BaseException as e:  # noqa: BLE001
                result["error"] = e
            result["at"] = time.monotonic()

        t = threading.Thread(target=query, daemon=True)
        resumed = None
        try:
            t.start()
            t.join(0.6)
            assert t.is_alive(), f"a query finished during PAUSE: {result}"
            resumed = time.monotonic()
            cur = adm.execute("RESUME")
            assert cur.statusmessage == "RESUME", cur.statusmessage
        finally:
            if resumed is None:
                adm.execute("RESUME")
        t.join(5)
        assert not t.is_alive(), "the held query did not finish within 5 s after RESUME"
        assert result.get("value") == 42, result
        assert result["at"] >= resumed
        assert c.execute("select 43").fetchone()[0] == 43


# --------------------------------------------------------------------------------------------
# 10. Metrics


def test_metrics_content(proxy, scratch_table):
    if proxy.http is None:
        pytest.skip("no HTTP endpoint known for this proxy")
    table = scratch_table("x int")
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        for i in range(3):
            c.execute("select %s::int", (i,))
        c.execute(f"insert into {table} values (1)")
        c.execute("begin")
        c.execute("commit")
        status, headers, body = h.http_get(*proxy.http, "/metrics")
    assert status == 200
    text = body.decode()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    q = [line for line in lines if re.match(r'tidegate_queries_total\{[^}]*class="[a-z_]+"', line)]
    assert q, "no tidegate_queries_total{class=...} samples:\n" + text[:2000]
    classes = {re.search(r'class="([a-z_]+)"', line).group(1): float(line.rsplit(" ", 1)[1]) for line in q}
    assert classes.get("read", 0) >= 3, classes
    assert classes.get("write", 0) >= 1, classes
    assert any(re.match(r"db_client_connections(\{|\s)", line) for line in lines), \
        "no db_client_connections sample:\n" + text[:2000]
    client = [line for line in lines if line.startswith("db_client_connections{") and 'side="client"' in line]
    assert client, [line for line in lines if line.startswith("db_client_connections")]


def test_server_connection_killed_mid_transaction(spawn_proxy):
    """A dropped server connection (the backend terminated while the client is inside a transaction)
    ends that client's session with an error, never a hang; other clients and later clients work,
    and the pool replaces the dead connection."""
    p = spawn_proxy({"pool.max_size": 2}, "killed")
    other = psycopg.connect(p.dsn(application_name="tg-it-bystander"), autocommit=True)
    victim = psycopg.connect(p.dsn(application_name="tg-it-victim"), autocommit=False)
    try:
        pid = victim.execute("select pg_backend_pid()").fetchone()[0]  # opens a transaction
        with psycopg.connect(h.direct_dsn(user="postgres"), autocommit=True) as su:
            assert su.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as ei:
            victim.execute("select 1").fetchone()
        assert time.monotonic() - started < 5, "the client waited instead of getting an error"
        assert ei.value.sqlstate in ("57P01", "08006", None), ei.value
        # The bystander and a new client are unaffected; the dead connection is not handed out.
        for _ in range(5):
            assert other.execute("select 41 + 1").fetchone()[0] == 42
            with psycopg.connect(p.dsn(), autocommit=True) as fresh:
                assert fresh.execute("select pg_backend_pid() <> %s", (pid,)).fetchone()[0] is True
        assert_alive(p)
    finally:
        other.close()
        try:
            victim.close()
        except psycopg.Error:
            pass
