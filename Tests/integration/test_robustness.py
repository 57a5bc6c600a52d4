"""Robustness (ARCHITECTURE.md contract 6): bad input gets a clear error and the proxy stays up.

Raw sockets speak protocol v3 by hand (tgharness.RawConn). Expected reaction, per case:
  * "fatal"  - an ErrorResponse with severity FATAL and SQLSTATE 08P01 (the set in `states`),
               then the proxy closes the connection. Tidegate must do this where it can.
  * "close"  - the client has already half-closed (nothing useful can be delivered): the proxy
               closes the connection; an 08P01 FATAL before the close is also accepted.
In every case the proxy must close within a few seconds (never hang), and a normal psycopg client
connecting afterwards must work.
"""

from __future__ import annotations

import random
import struct
import threading
import time

import psycopg
import pytest

import tgharness as h


def assert_proxy_usable(proxy: h.Proxy) -> None:
    if proxy.process is not None:
        assert proxy.process.poll() is None, f"{proxy.name} died:\n{proxy.log_tail()}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        assert c.execute("select 42, %s::text", ("ok",)).fetchone() == (42, "ok")


def assert_fatal(out: h.Outcome, proxy: h.Proxy, states=("08P01",)) -> dict[str, str]:
    assert out.end in ("closed", "reset"), f"proxy did not close the connection: {out.describe()}"
    errs = out.errors
    assert errs, f"expected an ErrorResponse ({'/'.join(states)} FATAL) before the close, got " \
                 f"{out.describe()}"
    e = errs[-1]
    assert e.get("S") == "FATAL", e
    assert e.get("C") in states, e
    assert e.get("M"), e
    if proxy.kind == "tidegate":
        assert e.get("V") == "FATAL", f"non-localized severity (V) missing: {e}"
    return e


_rng = random.Random(1234)
RANDOM_BYTES = bytes(_rng.randrange(256) for _ in range(256))  # declared length -516226258


def _after_auth(c: h.RawConn) -> None:
    out = c.startup("tidegate", "market")
    assert out.end == "ready", out.describe()


def case_random_bytes(c):
    c.send(RANDOM_BYTES)


def case_truncated_startup(c):
    c.send(h.startup_packet({"user": "tidegate", "database": "market"})[:20])
    c.shutdown_write()


def case_length_3(c):
    c.send(struct.pack("!i", 3) + b"abcd")


def case_length_2_31(c):
    c.send(struct.pack("!I", 1 << 31) + struct.pack("!i", h.PROTOCOL_V3))


def case_length_huge_valid_int(c):
    c.send(struct.pack("!i", 0x7FFFFFF0) + struct.pack("!i", h.PROTOCOL_V3) + b"user\0")


def case_protocol_2(c):
    c.send(h.startup_packet({"user": "tidegate", "database": "market"}, version=0x20000))


def case_startup_without_user(c):
    c.send(h.startup_packet({"database": "market"}))


def case_startup_not_nul_terminated(c):
    body = struct.pack("!i", h.PROTOCOL_V3) + b"user\0tidegate"
    c.send(struct.pack("!i", len(body) + 4) + body)


def case_unknown_type_after_auth(c):
    _after_auth(c)
    c.send(h.message(b"\x7a", b""))


def case_huge_length_after_auth(c):
    _after_auth(c)
    c.send(b"Q" + struct.pack("!i", 0x7FFFFFF0) + b"select 1")


def case_length_below_4_after_auth(c):
    _after_auth(c)
    c.send(b"Q" + struct.pack("!i", 2) + b"select 1\0")


CASES = [
    # name, action, expectation, accepted SQLSTATEs
    ("random_bytes", case_random_bytes, "fatal", ("08P01",)),
    ("truncated_startup_then_close", case_truncated_startup, "close", ("08P01",)),
    ("startup_length_3", case_length_3, "fatal", ("08P01",)),
    ("startup_length_2^31", case_length_2_31, "fatal", ("08P01",)),
    ("startup_length_2^31-16", case_length_huge_valid_int, "fatal", ("08P01",)),
    ("protocol_2.0", case_protocol_2, "fatal", ("08P01", "0A000")),
    ("startup_without_user", case_startup_without_user, "fatal", ("08P01", "28000")),
    ("startup_not_nul_terminated", case_startup_not_nul_terminated, "fatal", ("08P01",)),
    ("unknown_type_after_auth", case_unknown_type_after_auth, "fatal", ("08P01",)),
    ("huge_length_after_auth", case_huge_length_after_auth, "fatal", ("08P01",)),
    ("length_below_4_after_auth", case_length_below_4_after_auth, "fatal", ("08P01",)),
]


@pytest.mark.parametrize("name,action,expect,states", CASES, ids=[c[0] for c in CASES])
def test_bad_input(proxy, name, action, expect, states):
    with h.RawConn(proxy.host, proxy.port) as c:
        try:
            action(c)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may close while we are still writing
        out = c.read_until_close(timeout=5)
    if expect == "fatal":
        assert_fatal(out, proxy, states)
    else:
        assert out.end in ("closed", "reset"), f"proxy did not close: {out.describe()}"
        for e in out.errors:
            assert e.get("C") in states, e
    assert_proxy_usable(proxy)


def test_garbage_flood(proxy):
    """50 concurrent connections sending garbage; the proxy serves normal clients meanwhile."""
    def garbage(i):
        rng = random.Random(i)
        with h.RawConn(proxy.host, proxy.port) as c:
            try:
                c.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))))
                c.shutdown_write()
            except OSError:
                pass
            out = c.read_until_close(timeout=5)
            assert out.end in ("closed", "reset"), out.describe()

    errors = h.run_threads(50, garbage, timeout=30)
    assert not errors, errors[:3]
    assert_proxy_usable(proxy)


def test_ssl_request_then_plaintext(proxy):
    """Without TLS configured the proxy answers 'N'; the client continues in plaintext."""
    with h.RawConn(proxy.host, proxy.port) as c:
        c.send(h.ssl_request())
        assert c.read_byte() == b"N"
        out = c.startup("tidegate", "market")
        assert out.end == "ready", out.describe()
        q = c.simple_query("select 1")
        assert q.types.startswith("T") and "D" in q.types and q.end == "ready", q.describe()
        c.send(h.message(b"X"))
        assert c.read_until_close(timeout=5).end in ("closed", "reset")
    assert_proxy_usable(proxy)


def test_gssenc_request_refused(proxy):
    """GSSENCRequest: the proxy has no GSSAPI, so 'N' and the client continues in plaintext."""
    with h.RawConn(proxy.host, proxy.port) as c:
        c.send(struct.pack("!ii", 8, 80877104))
        assert c.read_byte() == b"N"
        out = c.startup("tidegate", "market")
        assert out.end == "ready", out.describe()


@pytest.mark.pgbouncer_xfail("PgBouncer 1.18 ignores a second SSLRequest and waits for the login "
                             "timeout")
def test_ssl_request_twice(proxy):
    """PostgreSQL answers a second SSLRequest with FATAL 0A000 (unsupported frontend protocol)."""
    with h.RawConn(proxy.host, proxy.port) as c:
        c.send(h.ssl_request())
        assert c.read_byte() == b"N"
        c.send(h.ssl_request())
        out = c.read_until_close(timeout=5)
    assert_fatal(out, proxy, ("08P01", "0A000"))
    assert_proxy_usable(proxy)


@pytest.mark.pgbouncer_xfail("PgBouncer 1.18 rejects protocol 3.x minor versions > 0 "
                             "(bad packet header) instead of NegotiateProtocolVersion")
def test_newer_minor_protocol_negotiated(proxy):
    """A 3.2 startup with a _pq_ option: like PostgreSQL, answer NegotiateProtocolVersion ('v')
    naming 3.0 and the unsupported option, then continue normally."""
    with h.RawConn(proxy.host, proxy.port) as c:
        out = c.startup("tidegate", "market", extra={"_pq_.tg_it_option": "x"}, version=0x30002)
        assert out.end == "ready", out.describe()
        v = [p for t, p in out.messages if t == "v"]
        assert v, f"no NegotiateProtocolVersion: {out.describe()}"
        newest, n = struct.unpack("!ii", v[0][:8])
        assert newest == h.PROTOCOL_V3 and n == 1 and b"_pq_.tg_it_option" in v[0]


def test_bogus_cancel_request(proxy):
    """A CancelRequest with an unknown key is ignored: the connection closes without a reply."""
    with h.RawConn(proxy.host, proxy.port) as c:
        c.send(struct.pack("!iiii", 16, h.CANCEL_REQUEST_CODE, 1234, 5678))
        out = c.read_until_close(timeout=5)
    assert out.end in ("closed", "reset") and not out.messages, out.describe()
    assert_proxy_usable(proxy)


# --------------------------------------------------------------------------------------------
# Authentication


@pytest.mark.pgbouncer_xfail("PgBouncer answers a failed SCRAM exchange with 08P01 "
                             "'SASL authentication failed'")
def test_wrong_password(proxy):
    with h.RawConn(proxy.host, proxy.port) as c:
        out = c.startup("tidegate", "market", password="not-the-password")
    assert out.end == "error", out.describe()
    assert out.errors[-1]["C"] == "28P01", out.errors
    assert out.errors[-1]["S"] == "FATAL"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(password="not-the-password")).close()
    assert_proxy_usable(proxy)


@pytest.mark.pgbouncer_xfail("PgBouncer answers an unknown user with 08P01 "
                             "'SASL authentication failed'")
def test_unknown_user_looks_like_wrong_password(proxy):
    """An unknown user goes through the same authentication exchange and ends in 28P01, so the
    proxy does not reveal which users exist."""
    with h.RawConn(proxy.host, proxy.port) as c:
        known = c.startup("tidegate", "market", password="not-the-password")
    with h.RawConn(proxy.host, proxy.port) as c:
        unknown = c.startup("tg_it_nobody", "market", password="not-the-password")
    assert unknown.end == "error", unknown.describe()
    assert unknown.errors[-1]["C"] == "28P01", unknown.errors
    assert h.auth_request_code(unknown) == h.auth_request_code(known), \
        (known.describe(), unknown.describe())
    assert unknown.types == known.types, (known.describe(), unknown.describe())


def test_md5_user_can_log_in(proxy):
    with h.RawConn(proxy.host, proxy.port) as c:
        out = c.startup("tg_md5", "market", password="tg_md5")
        assert out.end == "ready", out.describe()
    with psycopg.connect(proxy.dsn(user="tg_md5"), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("tg_md5",)


# --------------------------------------------------------------------------------------------
# Limits (need a second proxy instance with another config)


@pytest.mark.pgbouncer_xfail("PgBouncer refuses clients over max_client_conn with 08P01, not 53300")
def test_max_client_connections(spawn_proxy):
    p = spawn_proxy({"listen.max_client_connections": 5}, name="max5")
    conns = []
    try:
        for _ in range(5):
            c = psycopg.connect(p.dsn(), autocommit=True)
            c.execute("select 1")
            conns.append(c)
        with h.RawConn(p.host, p.port) as r:
            out = r.poll_early(0.3)
            if out is None:
                try:
                    out = r.startup("tidegate", "market")
                except (BrokenPipeError, ConnectionResetError):
                    out = h.Outcome(end="reset")
                if out.end == "error":
                    out.end = r.read_until_close(timeout=3).end
        assert out.errors, f"6th client: no ErrorResponse: {out.describe()}"
        assert out.errors[-1]["C"] == "53300", out.errors
        assert out.errors[-1]["S"] == "FATAL", out.errors
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn()).close()
        # existing clients are unaffected; after one leaves, a new client gets in
        assert conns[0].execute("select 2").fetchone() == (2,)
        conns.pop().close()

        def can_connect():
            try:
                psycopg.connect(p.dsn()).close()
                return True
            except psycopg.OperationalError:
                return False

        assert h.wait_for(can_connect, 5, 0.2), "slot not freed after a client disconnected"
    finally:
        for c in conns:
            c.close()


def test_startup_timeout(spawn_proxy):
    p = spawn_proxy({"limits.startup_timeout_ms": 1000}, name="startup1s")
    results = {}

    def silent():
        with h.RawConn(p.host, p.port, timeout=10) as c:
            t0 = time.monotonic()
            out = c.read_until_close(timeout=8)
            results["silent"] = (out, time.monotonic() - t0)

    def stalled_in_auth():
        with h.RawConn(p.host, p.port, timeout=10) as c:
            t0 = time.monotonic()
            c.send(h.startup_packet({"user": "tidegate", "database": "market"}))
            out = c.read_until_close(timeout=8)  # we never answer the SASL request
            results["stalled"] = (out, time.monotonic() - t0)

    threads = [threading.Thread(target=silent), threading.Thread(target=stalled_in_auth)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    # a well-behaved client is not affected by the stalled ones
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        time.sleep(1.5)  # longer than the startup timeout, but after startup: must survive
        assert c.execute("select 1").fetchone() == (1,)
    for t in threads:
        t.join(15)
    for name in ("silent", "stalled"):
        out, elapsed = results[name]
        assert out.end in ("closed", "reset"), f"{name}: not disconnected: {out.describe()}"
        assert 0.8 <= elapsed <= 5.0, f"{name}: disconnected after {elapsed:.2f} s (timeout 1 s)"
        for e in out.errors:
            assert e.get("C") in ("08P01", "57P05", "08006"), e


def test_max_message_bytes(spawn_proxy):
    p = spawn_proxy({"limits.max_message_bytes": 1 << 20}, name="maxmsg1m")
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        assert c.execute("select length(%s::text)", ("x" * 500_000,)).fetchone() == (500_000,)
    c = psycopg.connect(p.dsn(), autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            c.execute("select length(%s::text)", ("x" * (2 << 20),))
        assert ei.value.sqlstate in ("08P01", None), ei.value
    finally:
        # The FATAL can arrive while libpq is still sending; closing may then report that too.
        try:
            c.close()
        except psycopg.Error:
            pass
    with h.RawConn(p.host, p.port) as r:
        assert r.startup("tidegate", "market").end == "ready"
        try:
            r.send(h.message(b"Q", b"select '" + b"x" * (2 << 20) + b"'\0"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the error may be in our receive buffer
        out = r.read_until_close(timeout=5)
    assert_fatal(out, p)
    assert_proxy_usable(p)
