"""Fixtures for the Tidegate black-box integration suite (see README.md in this directory)."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable

import psycopg
import pytest

import tgharness as h


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kind = h.expected_kind()
    for item in items:
        if kind != "pgbouncer":
            continue
        for m in item.iter_markers("requires_tidegate"):
            why = m.args[0] if m.args else "Tidegate-specific behaviour"
            item.add_marker(pytest.mark.skip(reason=f"requires Tidegate (the proxy is PgBouncer): {why}"))
        for m in item.iter_markers("pgbouncer_xfail"):
            why = m.args[0] if m.args else "not supported by PgBouncer"
            item.add_marker(pytest.mark.xfail(reason=f"PgBouncer limitation: {why}", strict=False))


_SESSION_PROXY: dict[str, h.Proxy] = {}
_SPAWNED: list[h.Proxy] = []  # instances started by spawn_proxy for the running test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        p = _SESSION_PROXY.get("proxy")
        if p is not None and p.managed:
            rep.sections.append((f"{p.name} log tail ({p.log_path})", p.log_tail(40)))
        for sp in list(_SPAWNED):
            rep.sections.append((f"{sp.name} log tail ({sp.log_path})", sp.log_tail(40)))


@pytest.fixture(scope="session")
def lab() -> None:
    """The lab primary must be reachable; `scripts/lab up` (idempotent) is run once if not."""
    if h.lab_primary_up():
        return
    script = h.REPO / "scripts" / "lab"
    if script.exists() and not os.environ.get("TIDEGATE_NO_LAB_UP"):
        try:
            subprocess.run([str(script), "up"], check=False, timeout=300,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            pass
    if not h.lab_primary_up():
        pytest.skip(f"lab primary {h.HOST}:{h.PRIMARY_PORT} not reachable (run scripts/lab up)")


@pytest.fixture(scope="session")
def proxy(lab: None, tmp_path_factory: pytest.TempPathFactory):
    """The proxy under test, started for the session unless TIDEGATE_URL_HOSTPORT is set."""
    kind = h.expected_kind()
    url = os.environ.get("TIDEGATE_URL_HOSTPORT", "").strip()
    if url:
        host, port = h.parse_hostport(url)
        http = os.environ.get("TIDEGATE_HTTP_HOSTPORT", "").strip()
        p = h.Proxy(kind, host, port, http=h.parse_hostport(http) if http else None,
                    managed=False, name=f"{kind} at {url}")
        if not h.port_accepts(host, port, timeout=3):
            pytest.fail(f"TIDEGATE_URL_HOSTPORT={url}: nothing accepts connections there")
    else:
        workdir = tmp_path_factory.mktemp("proxy")
        try:
            if kind == "pgbouncer":
                p = h.start_pgbouncer(workdir, h.PGBOUNCER_STANDIN_PORT, name="pgbouncer-standin")
            else:
                p = h.start_tidegate(workdir, h.TIDEGATE_PORT, h.TIDEGATE_HTTP_PORT)
        except h.ProxyUnavailable as e:
            pytest.skip(str(e))
        except h.ProxyStartError as e:
            pytest.fail(str(e), pytrace=False)
    h.set_active_proxy(p)
    _SESSION_PROXY["proxy"] = p
    yield p
    h.set_active_proxy(None)
    _SESSION_PROXY.pop("proxy", None)
    if p.managed:
        p.stop()
        clean = (0, -15, 143, 1) if p.kind == "pgbouncer" else (0, -15, 143)  # pgbouncer: 1
        if p.process is not None and p.process.returncode not in clean:
            print(f"\n{p.name} exited with {p.process.returncode}; log tail:\n{p.log_tail()}")


@pytest.fixture
def spawn_proxy(proxy: h.Proxy, tmp_path_factory: pytest.TempPathFactory):
    """Factory: spawn_proxy({'listen.max_client_connections': 5, 'pool.mode': 'session'}) starts
    another instance of the proxy under test on a port from 16450 up, with the session config plus
    the given dotted-key overrides; stopped at the end of the test."""
    started: list[h.Proxy] = []

    def spawn(overrides: dict[str, Any], name: str = "variant") -> h.Proxy:
        if proxy.kind == "tidegate" and not proxy.managed:
            pytest.skip("TIDEGATE_URL_HOSTPORT is set: the suite does not start other Tidegate "
                        "instances with modified configs")
        workdir = tmp_path_factory.mktemp(name)
        port = h.allocate_port("pg")
        try:
            if proxy.kind == "pgbouncer":
                p = h.start_pgbouncer(workdir, port, overrides, name=f"pgbouncer-{name}")
            else:
                p = h.start_tidegate(workdir, port, h.allocate_port("http"), overrides,
                                     name=f"tidegate-{name}")
        except h.UnsupportedOverride as e:
            pytest.skip(str(e))
        except h.ProxyUnavailable as e:
            pytest.skip(str(e))
        except h.ProxyStartError as e:
            pytest.fail(str(e), pytrace=False)
        started.append(p)
        _SPAWNED.append(p)
        return p

    yield spawn
    _retire(started)


def _tidegate_launcher(tmp_path_factory: pytest.TempPathFactory, started: list[h.Proxy]):
    def launch(overrides: dict[str, Any], name: str = "variant") -> h.Proxy:
        if h.expected_kind() != "tidegate":
            pytest.skip("needs a Tidegate instance the suite starts itself (the proxy is PgBouncer)")
        if os.environ.get("TIDEGATE_URL_HOSTPORT", "").strip():
            pytest.skip("TIDEGATE_URL_HOSTPORT is set: the suite does not start other Tidegate "
                        "instances with modified configs")
        workdir = tmp_path_factory.mktemp(name)
        try:
            p = h.start_tidegate(workdir, h.allocate_port("pg"), h.allocate_port("http"), overrides,
                                 name=f"tidegate-{name}")
        except h.ProxyUnavailable as e:
            pytest.skip(str(e))
        except h.ProxyStartError as e:
            pytest.fail(str(e), pytrace=False)
        started.append(p)
        _SPAWNED.append(p)
        return p
    return launch


def _retire(started: list[h.Proxy]) -> None:
    for p in started:
        p.stop()
        if p in _SPAWNED:
            _SPAWNED.remove(p)


@pytest.fixture
def tidegate_instance(tmp_path_factory: pytest.TempPathFactory):
    """Factory: tidegate_instance(overrides, name) starts a Tidegate (never the stand-in) with the
    base config plus dotted-key overrides, independent of the session proxy and of the lab (e.g.
    pointed at a throwaway cluster); stopped at the end of the test; its log tail is attached to
    failures."""
    started: list[h.Proxy] = []
    yield _tidegate_launcher(tmp_path_factory, started)
    _retire(started)


@pytest.fixture(scope="module")
def module_tidegate(tmp_path_factory: pytest.TempPathFactory):
    """Like tidegate_instance, but instances live until the end of the module."""
    started: list[h.Proxy] = []
    yield _tidegate_launcher(tmp_path_factory, started)
    _retire(started)


@pytest.fixture
def direct_conn(lab: None):
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def proxy_conn(proxy: h.Proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def scratch_table(lab: None) -> Callable[[str], str]:
    """Factory creating regular tables (unique names) in `market` via the primary; dropped after."""
    names: list[str] = []

    def make(columns_sql: str, prefix: str = "tg_it") -> str:
        name = h.unique_name(prefix)
        with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
            c.execute(f"create table {name} ({columns_sql})")
        names.append(name)
        return name

    yield make
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        for n in names:
            c.execute(f"drop table if exists {n}")
