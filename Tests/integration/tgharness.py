"""Shared helpers for the Tidegate black-box integration suite.

Everything here talks to servers only through sockets, psycopg and the client binaries, so the
same code runs against Tidegate and against the PgBouncer stand-in.

Contents:
  * DSN helpers: direct_dsn() (the lab primary), proxy_dsn() (the proxy under test).
  * Launchers: start_tidegate(), start_pgbouncer(), returning a Proxy.
  * RawConn: a minimal hand-written protocol v3 client (startup, SSLRequest, cleartext / md5 /
    SCRAM-SHA-256 authentication, message framing) for robustness tests.
  * run_steps() / assert_same(): the differential comparison used by the transparency suite.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
import pytest
from psycopg import pq
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PRIMARY_PORT = int(os.environ.get("TIDEGATE_PRIMARY_PORT", "15432"))
REDIS_PORT = int(os.environ.get("TIDEGATE_REDIS_PORT", "16379"))

# Default ports for the instances the suite starts itself.
TIDEGATE_PORT = int(os.environ.get("TIDEGATE_TEST_PORT", "16432"))
TIDEGATE_HTTP_PORT = int(os.environ.get("TIDEGATE_TEST_HTTP_PORT", "19187"))
PGBOUNCER_STANDIN_PORT = int(os.environ.get("TIDEGATE_TEST_STANDIN_PORT", "16442"))
# extra proxy instances (16433/16434 are lab replicas); busy ports are skipped
SPAWN_PORT_BASE = int(os.environ.get("TIDEGATE_TEST_SPAWN_PORT_BASE", "16450"))
SPAWN_HTTP_PORT_BASE = int(os.environ.get("TIDEGATE_TEST_SPAWN_HTTP_PORT_BASE", "19190"))

PASSWORDS = {"tidegate": "tidegate", "tg_md5": "tg_md5", "tg_trust": "", "postgres": ""}

# Users written into the Tidegate config the suite generates.
TIDEGATE_USERS = {
    "tidegate": {"password": "tidegate", "admin": True},
    "tg_md5": {"password": "tg_md5"},
}

CONNECT_TIMEOUT = 10

# psycopg prepares a statement after `prepare_threshold` executions; None would also disable an
# explicit prepare=True, so use a threshold that is never reached and pass prepare= explicitly.
NEVER_AUTO_PREPARE = 1 << 30


# --------------------------------------------------------------------------------------------
# DSNs


def make_dsn(host: str, port: int, db: str = "market", user: str = "tidegate",
             password: str | None = None, **extra: Any) -> str:
    if password is None:
        password = PASSWORDS.get(user, "")
    kw: dict[str, Any] = dict(host=host, port=port, dbname=db, user=user,
                              connect_timeout=CONNECT_TIMEOUT)
    if password:
        kw["password"] = password
    kw.update(extra)
    return make_conninfo("", **kw)


def direct_dsn(db: str = "market", user: str = "tidegate", password: str | None = None,
               **extra: Any) -> str:
    """DSN of the lab primary (bypassing the proxy)."""
    return make_dsn(HOST, PRIMARY_PORT, db, user, password, **extra)


_ACTIVE: "Proxy | None" = None


def set_active_proxy(p: "Proxy | None") -> None:
    global _ACTIVE
    _ACTIVE = p


def active_proxy() -> "Proxy":
    if _ACTIVE is None:
        raise RuntimeError("no proxy is active; request the `proxy` fixture")
    return _ACTIVE


def proxy_dsn(db: str = "market", user: str = "tidegate", password: str | None = None,
              **extra: Any) -> str:
    """DSN of the proxy under test (Tidegate, or the stand-in)."""
    return active_proxy().dsn(db, user, password, **extra)


# --------------------------------------------------------------------------------------------
# Ports and processes


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


_port_lock = threading.Lock()
_next_ports = {"pg": SPAWN_PORT_BASE, "http": SPAWN_HTTP_PORT_BASE}


def allocate_port(kind: str = "pg") -> int:
    with _port_lock:
        for _ in range(200):
            p = _next_ports[kind]
            _next_ports[kind] += 1
            if port_free(p):
                return p
    raise RuntimeError("no free port found")


class ProxyStartError(RuntimeError):
    pass


class ProxyUnavailable(Exception):
    """The proxy cannot be started here (binary missing, ...); tests should skip."""


class UnsupportedOverride(Exception):
    """A config override has no equivalent for this proxy kind; tests should skip."""


@dataclass
class Proxy:
    kind: str  # "tidegate" or "pgbouncer"
    host: str
    port: int
    http: tuple[str, int] | None = None
    managed: bool = False  # started (and stopped) by the suite
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    log_path: Path | None = None
    config: dict | None = None
    name: str = "proxy"
    config_path: Path | None = None  # the config file the suite wrote (Tidegate instances)

    @property
    def admin_db(self) -> str:
        return "pgbouncer" if self.kind == "pgbouncer" else "tidegate"

    def dsn(self, db: str = "market", user: str = "tidegate", password: str | None = None,
            **extra: Any) -> str:
        return make_dsn(self.host, self.port, db, user, password, **extra)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log captured: the suite did not start this proxy)"
        data = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        return "\n".join(data[-lines:])

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            return False
        return port_accepts(self.host, self.port)

    def stop(self) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _wait_listening(proxy: Proxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.process is not None and proxy.process.poll() is not None:
            raise ProxyStartError(
                f"{proxy.name} exited with status {proxy.process.returncode} before listening on "
                f"{proxy.host}:{proxy.port}; log tail ({proxy.log_path}):\n{proxy.log_tail()}")
        if port_accepts(proxy.host, proxy.port, timeout=0.3):
            return
        time.sleep(0.1)
    proxy.stop()
    raise ProxyStartError(
        f"{proxy.name} did not accept on {proxy.host}:{proxy.port} within {timeout:.0f} s; "
        f"log tail ({proxy.log_path}):\n{proxy.log_tail()}")


def _child_env() -> dict[str, str]:
    # Tidegate reads TIDEGATE_* variables as config overrides; the suite's own TIDEGATE_* knobs
    # (TIDEGATE_BIN, TIDEGATE_URL_HOSTPORT, ...) must not leak into it. The config file is complete.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
    for k in ("PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGPASSFILE"):
        env.pop(k, None)
    return env


def tidegate_binary() -> Path:
    return Path(os.environ.get("TIDEGATE_BIN", str(REPO / ".build" / "debug" / "tidegate")))


def _set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"config key {key}: {p} is not a mapping")
    node[parts[-1]] = value


def tidegate_config(port: int, http_port: int, overrides: dict[str, Any] | None = None) -> dict:
    try:
        import yaml  # type: ignore
    except ImportError as e:  # pragma: no cover
        raise ProxyUnavailable("PyYAML is needed to write the Tidegate config "
                               "(python3 -m pip install pyyaml)") from e
    base = REPO / "config" / "tidegate.yaml"
    cfg = yaml.safe_load(base.read_text()) or {}
    # The suite's base is a single node, the lab primary: routing tests opt in with `regions`
    # overrides (regions_overrides()).
    for key in ("region", "regions"):
        cfg.pop(key, None)
    cfg["primary"] = {"host": HOST, "port": PRIMARY_PORT}
    _set_dotted(cfg, "listen.host", HOST)
    _set_dotted(cfg, "listen.port", port)
    _set_dotted(cfg, "http.host", HOST)
    _set_dotted(cfg, "http.port", http_port)
    users = cfg.get("users") or {}
    for name, spec in TIDEGATE_USERS.items():
        users.setdefault(name, {})
        users[name].update(spec)
    cfg["users"] = users
    for k, v in (overrides or {}).items():
        _set_dotted(cfg, k, v)
    if "regions" in cfg:
        # Regional topology: the single-node `primary:` key of the base config must not be there too.
        cfg.pop("primary", None)
    return cfg


# The lab's nodes as Tidegate sees them (node names are arbitrary: roles are discovered).
US_EAST_PORT = int(os.environ.get("TIDEGATE_US_EAST_PORT", "15433"))
EU_WEST_PORT = int(os.environ.get("TIDEGATE_EU_WEST_PORT", "15434"))
LAB_NODE_PORTS = {"primary": PRIMARY_PORT, "us-east-1": US_EAST_PORT, "eu-west-1": EU_WEST_PORT}


def regions_overrides(region: str = "us-east", regions: dict[str, Any] | None = None,
                      routing: dict[str, Any] | None = None,
                      health: dict[str, Any] | None = None) -> dict[str, Any]:
    """Overrides for a regional (routing) config; by default the lab: us-east = primary + us-east-1,
    eu-west = eu-west-1, each the other's fallback. `routing` / `health` entries are merged into
    the defaults below (fast probes so tests do not wait long)."""
    if regions is None:
        regions = {
            "us-east": {"fallback": ["eu-west"], "nodes": {
                "primary": {"host": HOST, "port": PRIMARY_PORT},
                "us-east-1": {"host": HOST, "port": US_EAST_PORT}}},
            "eu-west": {"fallback": ["us-east"], "nodes": {
                "eu-west-1": {"host": HOST, "port": EU_WEST_PORT}}},
        }
    r = {"read_your_writes": "session", "max_lag_ms": 1000, "max_lag_bytes": 0,
         "failover_wait_ms": 15000, "retry_reads": True, "safe_functions": []}
    r.update(routing or {})
    hc = {"interval_ms": 500, "timeout_ms": 1000, "up_after": 3, "user": "tidegate",
          "database": "postgres"}
    hc.update(health or {})
    return {"region": region, "regions": regions, "routing": r, "health": hc}


def start_tidegate(workdir: Path, port: int, http_port: int,
                   overrides: dict[str, Any] | None = None, name: str = "tidegate",
                   startup_timeout: float = 20.0) -> Proxy:
    binary = tidegate_binary()
    if not binary.exists():
        raise ProxyUnavailable(
            f"Tidegate binary not found at {binary} (build it with `swift build`, set TIDEGATE_BIN, "
            f"or point TIDEGATE_URL_HOSTPORT at a running proxy)")
    import yaml  # type: ignore

    if not port_free(port):
        raise ProxyStartError(f"port {port} is already in use; cannot start {name}")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = tidegate_config(port, http_port, overrides)
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(cfg_path)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(workdir),
                            env=_child_env(), start_new_session=True)
    log.close()
    proxy = Proxy("tidegate", HOST, port, http=(HOST, http_port) if http_port else None,
                  managed=True, process=proc, workdir=workdir, log_path=log_path, config=cfg,
                  name=name, config_path=cfg_path)
    _wait_listening(proxy, startup_timeout)
    return proxy


# Tidegate config keys -> PgBouncer settings (for spawned stand-in instances).
_PGB_KEYS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "listen.max_client_connections": ("max_client_conn", lambda v: str(int(v))),
    "limits.startup_timeout_ms": ("client_login_timeout", lambda v: str(max(1, math.ceil(v / 1000)))),
    "limits.idle_in_transaction_timeout_ms": ("idle_transaction_timeout",
                                              lambda v: str(math.ceil(v / 1000))),
    "pool.mode": ("pool_mode", str),
    "pool.max_size": ("default_pool_size", lambda v: str(int(v))),
}


def start_pgbouncer(workdir: Path, port: int, overrides: dict[str, Any] | None = None,
                    name: str = "pgbouncer", startup_timeout: float = 20.0) -> Proxy:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise ProxyUnavailable("pgbouncer is not installed")
    if not port_free(port):
        raise ProxyStartError(f"port {port} is already in use; cannot start {name}")
    settings = {
        "listen_addr": HOST,
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": str(workdir / f"{name}.users"),
        "admin_users": "tidegate",
        "stats_users": "tidegate",
        "pool_mode": "transaction",
        "max_client_conn": "1000",
        "default_pool_size": "40",
        "ignore_startup_parameters": "extra_float_digits",
        "client_login_timeout": "10",
        # Run DISCARD ALL whenever a server connection goes back to the pool (also in transaction
        # pooling): session state cannot leak from one test's client to the next, so the
        # stand-in's known failures are deterministic.
        "server_reset_query": "DISCARD ALL",
        "server_reset_query_always": "1",
        "log_connections": "0",
        "log_disconnections": "0",
        "pidfile": "",
    }
    for k, v in (overrides or {}).items():
        if k not in _PGB_KEYS:
            raise UnsupportedOverride(f"no PgBouncer equivalent for Tidegate config key {k}")
        pk, conv = _PGB_KEYS[k]
        settings[pk] = conv(v)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    users = "".join(f'"{u}" "{spec["password"]}"\n' for u, spec in TIDEGATE_USERS.items())
    (workdir / f"{name}.users").write_text(users)
    ini = "[databases]\n* = host=%s port=%d\n\n[pgbouncer]\n" % (HOST, PRIMARY_PORT)
    ini += "".join(f"{k} = {v}\n" for k, v in settings.items())
    ini_path = workdir / f"{name}.ini"
    ini_path.write_text(ini)
    for f in (ini_path, workdir / f"{name}.users"):
        os.chmod(f, 0o644)
    cmd = [binary]
    if os.geteuid() == 0:
        cmd += ["-u", "postgres"]  # pgbouncer refuses to run as root
    cmd.append(str(ini_path))
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd="/", env=_child_env(), start_new_session=True)
    log.close()
    proxy = Proxy("pgbouncer", HOST, port, http=None, managed=True, process=proc, workdir=workdir,
                  log_path=log_path, config=dict(settings), name=name)
    _wait_listening(proxy, startup_timeout)
    return proxy


_kind_cache: dict[str, str] = {}


def expected_kind() -> str:
    """Which proxy the suite runs against: 'tidegate' or 'pgbouncer'.

    TIDEGATE_PROXY_KIND wins; TIDEGATE_STANDIN=pgbouncer starts a stand-in; with
    TIDEGATE_URL_HOSTPORT the proxy is probed (PgBouncer answers SHOW VERSION on db `pgbouncer`).
    """
    if "kind" in _kind_cache:
        return _kind_cache["kind"]
    kind = os.environ.get("TIDEGATE_PROXY_KIND", "").strip().lower()
    if not kind:
        url = os.environ.get("TIDEGATE_URL_HOSTPORT", "").strip()
        if os.environ.get("TIDEGATE_STANDIN", "").strip().lower() == "pgbouncer" and not url:
            kind = "pgbouncer"
        elif url:
            host, port = parse_hostport(url)
            kind = "tidegate"
            try:
                with psycopg.connect(make_dsn(host, port, "pgbouncer", "tidegate", connect_timeout=3),
                                     autocommit=True) as c:
                    v = c.execute("SHOW VERSION").fetchone()
                    if v and "pgbouncer" in str(v[0]).lower():
                        kind = "pgbouncer"
            except Exception:
                pass
        else:
            kind = "tidegate"
    _kind_cache["kind"] = kind
    return kind


def parse_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.strip().rpartition(":")
    return (host or HOST), int(port)


# --------------------------------------------------------------------------------------------
# Raw protocol v3


PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102


def startup_packet(params: dict[str, str], version: int = PROTOCOL_V3) -> bytes:
    body = struct.pack("!i", version)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def message(type_byte: bytes, payload: bytes = b"") -> bytes:
    return type_byte + struct.pack("!i", len(payload) + 4) + payload


def parse_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse / NoticeResponse: {'S': 'FATAL', 'C': '08P01', ...}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(payload) and payload[i] != 0:
        code = chr(payload[i])
        end = payload.index(b"\0", i + 1)
        out[code] = payload[i + 1:end].decode("utf-8", "replace")
        i = end + 1
    return out


class ProtocolError(Exception):
    pass


@dataclass
class Outcome:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    end: str = ""  # 'closed', 'reset', 'timeout', 'ready'

    @property
    def errors(self) -> list[dict[str, str]]:
        return [parse_fields(p) for t, p in self.messages if t == "E"]

    @property
    def types(self) -> str:
        return "".join(t for t, _ in self.messages)

    def describe(self) -> str:
        errs = "; ".join(f"{e.get('S')} {e.get('C')} {e.get('M')}" for e in self.errors)
        return f"messages={self.types!r} end={self.end} errors=[{errs}]"


class RawConn:
    """A socket speaking just enough protocol v3 for tests that need to misbehave."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.params: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *a: Any) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF. Raises socket.timeout / ConnectionResetError."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def poll_early(self, wait: float = 0.3) -> Outcome | None:
        """Messages the server sends before the client says anything (e.g. an immediate
        'too many clients' error), or None if it stays silent for `wait` seconds."""
        try:
            self._fill(time.monotonic() + wait)
        except (socket.timeout, TimeoutError):
            return None
        except (ConnectionResetError, BrokenPipeError):
            return Outcome(end="reset")
        out = self.read_until_close(timeout=2.0)
        return out

    def read_byte(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.buf:
            if not self._fill(deadline):
                return b""
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def read_message(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """One typed message, or None on EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < 5:
            if not self._fill(deadline):
                if self.buf:
                    raise ProtocolError(f"EOF inside a message header: {self.buf!r}")
                return None
        t = chr(self.buf[0])
        (length,) = struct.unpack("!i", self.buf[1:5])
        if length < 4 or length > 1 << 28:
            raise ProtocolError(f"server sent message {t!r} with length {length}")
        while len(self.buf) < 1 + length:
            if not self._fill(deadline):
                raise ProtocolError("EOF inside a message body")
        payload = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return t, payload

    def read_until_close(self, timeout: float = 5.0) -> Outcome:
        out = Outcome()
        deadline = time.monotonic() + timeout
        try:
            while True:
                m = self.read_message(timeout=max(0.01, deadline - time.monotonic()))
                if m is None:
                    out.end = "closed"
                    return out
                out.messages.append(m)
        except (socket.timeout, TimeoutError):
            out.end = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            out.end = "reset"
        except ProtocolError as e:
            out.end = f"garbage ({e})"
        return out

    def read_until_ready(self, timeout: float | None = None) -> Outcome:
        """Messages up to ReadyForQuery (end='ready') or a FATAL error / close."""
        out = Outcome()
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                m = self.read_message(timeout=max(0.01, deadline - time.monotonic()))
                if m is None:
                    out.end = "closed"
                    return out
                out.messages.append(m)
                if m[0] == "Z":
                    out.end = "ready"
                    return out
        except (socket.timeout, TimeoutError):
            out.end = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            out.end = "reset"
        return out

    def startup(self, user: str, database: str, password: str | None = None,
                extra: dict[str, str] | None = None, version: int = PROTOCOL_V3) -> Outcome:
        """Send StartupMessage and authenticate. Outcome.end == 'ready' on success."""
        params = {"user": user, "database": database}
        params.update(extra or {})
        self.send(startup_packet(params, version))
        return self.authenticate(user, password if password is not None else PASSWORDS.get(user, ""))

    def authenticate(self, user: str, password: str) -> Outcome:
        out = Outcome()
        scram: dict[str, Any] = {}
        try:
            while True:
                m = self.read_message()
                if m is None:
                    out.end = "closed"
                    return out
                out.messages.append(m)
                t, p = m
                if t == "E":
                    out.end = "error"
                    # a FATAL error is followed by close; collect nothing else
                    return out
                if t == "S":
                    k, v, _ = p.split(b"\0", 2)
                    self.params[k.decode()] = v.decode()
                elif t == "K":
                    self.backend_key = struct.unpack("!ii", p[:8])
                elif t == "Z":
                    out.end = "ready"
                    return out
                elif t == "R":
                    (code,) = struct.unpack("!i", p[:4])
                    if code == 0:
                        pass
                    elif code == 3:  # cleartext
                        self.send(message(b"p", password.encode() + b"\0"))
                    elif code == 5:  # md5
                        salt = p[4:8]
                        inner = hashlib.md5((password + user).encode()).hexdigest()
                        outer = hashlib.md5(inner.encode() + salt).hexdigest()
                        self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
                    elif code == 10:  # SASL
                        mechs = [x.decode() for x in p[4:].split(b"\0") if x]
                        if "SCRAM-SHA-256" not in mechs:
                            raise ProtocolError(f"no SCRAM-SHA-256 among {mechs}")
                        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
                        first_bare = f"n=,r={nonce}"
                        data = ("n,," + first_bare).encode()
                        scram.update(nonce=nonce, first_bare=first_bare)
                        self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data))
                    elif code == 11:  # SASLContinue
                        server_first = p[4:].decode()
                        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                        if not attrs["r"].startswith(scram["nonce"]):
                            raise ProtocolError("server nonce does not extend the client nonce")
                        salt = base64.b64decode(attrs["s"])
                        iters = int(attrs["i"])
                        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
                        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
                        stored_key = hashlib.sha256(client_key).digest()
                        without_proof = f"c=biws,r={attrs['r']}"
                        auth_msg = f"{scram['first_bare']},{server_first},{without_proof}".encode()
                        sig = hmac.new(stored_key, auth_msg, "sha256").digest()
                        proof = bytes(a ^ b for a, b in zip(client_key, sig))
                        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
                        self.send(message(b"p", final.encode()))
                    elif code == 12:  # SASLFinal
                        pass
                    else:
                        raise ProtocolError(f"unsupported authentication request {code}")
        except (socket.timeout, TimeoutError):
            out.end = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            out.end = "reset"
        return out

    def simple_query(self, sql: str) -> Outcome:
        self.send(message(b"Q", sql.encode() + b"\0"))
        return self.read_until_ready()


def auth_request_code(outcome: Outcome) -> int | None:
    for t, p in outcome.messages:
        if t == "R":
            return struct.unpack("!i", p[:4])[0]
    return None


# --------------------------------------------------------------------------------------------
# Differential comparison


@dataclass(frozen=True)
class Mode:
    name: str
    autocommit: bool = True
    binary: bool = False
    prepare: bool = False
    pipeline: bool = False


MODES: dict[str, Mode] = {
    # no params: simple query protocol ('Q'); with params: unnamed extended protocol
    "simple": Mode("simple"),
    # always extended protocol (psycopg pipeline mode: Parse/Bind/Describe/Execute ... Sync)
    "extended": Mode("extended", pipeline=True),
    # unnamed extended protocol, binary result format
    "binary": Mode("binary", binary=True),
    # named server-side prepared statements (_pg3_N), text results
    "prepared": Mode("prepared", prepare=True),
    # named prepared statements, binary results
    "prepared_binary": Mode("prepared_binary", binary=True, prepare=True),
    # inside explicit transactions (psycopg BEGINs implicitly; COMMIT at the end)
    "txn": Mode("txn", autocommit=False),
    "txn_prepared_binary": Mode("txn_prepared_binary", autocommit=False, binary=True, prepare=True),
}

# ParameterStatus values compared after every step.
REPORTED_PARAMS = (
    "TimeZone", "DateStyle", "IntervalStyle", "client_encoding", "server_encoding",
    "standard_conforming_strings", "integer_datetimes", "is_superuser", "session_authorization",
    "application_name", "server_version", "default_transaction_read_only", "in_hot_standby",
)

DIAG_FIELDS = (
    "severity", "severity_nonlocalized", "sqlstate", "message_primary", "message_detail",
    "message_hint", "statement_position", "internal_position", "internal_query", "context",
    "schema_name", "table_name", "column_name", "datatype_name", "constraint_name",
    "source_file", "source_line", "source_function",
)

BIG_RESULT_ROWS = 200  # results with more rows are compared by hash (plus count and first rows)


def diag_dict(diag: Any) -> dict[str, Any]:
    return {f: getattr(diag, f, None) for f in DIAG_FIELDS}


def error_dict(e: BaseException) -> dict[str, Any]:
    d: dict[str, Any] = {"class": type(e).__name__, "text": str(e)}
    if isinstance(e, psycopg.Error):
        d["sqlstate"] = e.sqlstate
        d.update(diag_dict(e.diag))
    return d


def _safe_values(cur: psycopg.Cursor) -> Any:
    try:
        return cur.fetchall()
    except Exception as e:  # noqa: BLE001 - e.g. text timestamptz with DateStyle SQL: psycopg
        # can't parse it (NotImplementedError); the raw bytes are still compared
        return f"<load error {type(e).__name__}: {e}>"


def collect_results(cur: psycopg.Cursor) -> list[dict[str, Any]]:
    sets = []
    while True:
        res = cur.pgresult
        if res is None:
            break
        s: dict[str, Any] = {
            "status": pq.ExecStatus(res.status).name,
            "command": cur.statusmessage,
            "rowcount": cur.rowcount,
        }
        if res.nfields:
            s["columns"] = [
                dict(name=res.fname(i), table_oid=res.ftable(i), column=res.ftablecol(i),
                     type_oid=res.ftype(i), type_size=res.fsize(i), typmod=res.fmod(i),
                     format=res.fformat(i))
                for i in range(res.nfields)
            ]
            raw = [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
            values = _safe_values(cur)
            if len(raw) > BIG_RESULT_ROWS:
                h = hashlib.sha256()
                for row in raw:
                    for v in row:
                        h.update(b"N" if v is None else b"V%d:" % len(v) + v)
                s["raw"] = dict(rows=len(raw), sha256=h.hexdigest(), head=raw[:3], tail=raw[-3:])
                vr = repr(values)
                s["values"] = dict(sha256=hashlib.sha256(vr.encode()).hexdigest(), head=vr[:300])
            else:
                s["raw"] = raw
                s["values"] = repr(values)
        sets.append(s)
        if not cur.nextset():
            break
    return sets


Step = Any  # str | (sql, params) | NEW_TRANSACTION

# Step marker: commit the current transaction (transaction modes); no statement is sent.
NEW_TRANSACTION = "<new transaction>"


def _norm(step: Step) -> tuple[str, Any]:
    if isinstance(step, str):
        return step, None
    sql, params = step
    return sql, params


class ServerSwitcher:
    """Two extra connections that, between the steps of the client under test, take turns holding
    an open transaction. In transaction pooling this takes away the server connection the client
    just released, so consecutive statements of the client run on different server connections:
    session state (SET, prepared statements, LISTEN) must be carried over by the proxy. Directly
    on PostgreSQL it changes nothing."""

    def __init__(self, dsn: str):
        self.conns = [psycopg.connect(dsn, autocommit=True, prepare_threshold=None) for _ in range(2)]
        self.turn = 0

    def switch(self) -> None:
        grab, release = self.conns[self.turn % 2], self.conns[(self.turn + 1) % 2]
        self.turn += 1
        grab.execute("begin")
        grab.execute("select 1")
        if release.info.transaction_status == pq.TransactionStatus.INTRANS:
            release.execute("commit")

    def close(self) -> None:
        for c in self.conns:
            c.close()


def run_steps(dsn: str, steps: Sequence[Step], mode: Mode,
              conn_kwargs: dict[str, Any] | None = None,
              switch_servers: bool = True) -> list[dict[str, Any]]:
    """Run steps on one connection in the given mode; return a comparable record per step."""
    out: list[dict[str, Any]] = []
    notices: list[dict[str, Any]] = []
    switcher = ServerSwitcher(dsn) if switch_servers else None
    try:
        return _run_steps(dsn, steps, mode, conn_kwargs, switcher, out, notices)
    finally:
        if switcher:
            switcher.close()


def _run_steps(dsn, steps, mode, conn_kwargs, switcher, out, notices):
    with psycopg.connect(dsn, autocommit=mode.autocommit, prepare_threshold=NEVER_AUTO_PREPARE,
                         **(conn_kwargs or {})) as conn:
        conn.add_notice_handler(lambda d: notices.append(diag_dict(d)))
        for i, step in enumerate(steps):
            if switcher and i > 0:
                switcher.switch()
            if step is NEW_TRANSACTION:
                rec = {"step": step}
                if not mode.autocommit:
                    try:
                        conn.commit()
                    except psycopg.Error as e:
                        rec["error"] = error_dict(e)
                out.append(rec)
                continue
            sql, params = _norm(step)
            rec: dict[str, Any] = {"step": sql if len(sql) < 200 else sql[:200] + "..."}
            cur = conn.cursor(binary=mode.binary)
            try:
                if mode.pipeline:
                    with conn.pipeline():
                        cur.execute(sql, params, prepare=mode.prepare)
                else:
                    cur.execute(sql, params, prepare=mode.prepare)
                rec["results"] = collect_results(cur)
            except psycopg.Error as e:
                rec["error"] = error_dict(e)
            rec["txstatus"] = conn.info.transaction_status.name
            if "error" in rec and not mode.autocommit:
                conn.rollback()
            cur.close()
            rec["notices"] = list(notices)
            notices.clear()
            rec["params"] = {k: conn.info.parameter_status(k) for k in REPORTED_PARAMS}
            out.append(rec)
        if not mode.autocommit:
            rec = {"step": "<commit>"}
            try:
                conn.commit()
            except psycopg.Error as e:
                rec["error"] = error_dict(e)
            rec["notices"] = list(notices)
            out.append(rec)
    return out


def differences(a: Any, b: Any, path: str = "", out: list[str] | None = None,
                limit: int = 8) -> list[str]:
    """Paths where a (direct) and b (proxy) differ, at most `limit`."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if type(a) is not type(b):
        out.append(f"{path}: type {type(a).__name__} != {type(b).__name__}: {a!r:.300} vs {b!r:.300}")
    elif isinstance(a, dict):
        for k in list(a.keys()) + [k for k in b.keys() if k not in a]:
            if k not in a or k not in b:
                out.append(f"{path}.{k}: present only {'directly' if k in a else 'through the proxy'}: "
                           f"{(a.get(k) if k in a else b.get(k))!r:.300}")
            else:
                differences(a[k], b[k], f"{path}.{k}", out, limit)
            if len(out) >= limit:
                break
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out, limit)
            if len(out) >= limit:
                break
        if len(a) != len(b) and len(out) < limit:
            out.append(f"{path}: length {len(a)} (direct) != {len(b)} (proxy)")
    elif a != b:
        out.append(f"{path}: direct {a!r:.400} != proxy {b!r:.400}")
    return out


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    d = differences(a, b, path, limit=1)
    return d[0] if d else None


def _step_names(records: Any) -> dict[int, str]:
    if isinstance(records, list):
        return {i: r.get("step", "") for i, r in enumerate(records) if isinstance(r, dict)}
    return {}


def assert_same(direct: Any, proxied: Any, what: str = "") -> None:
    diffs = differences(direct, proxied)
    if diffs:
        names = _step_names(direct)
        lines = []
        for d in diffs:
            lines.append(f"  at {d}")
            if d.startswith("[") and "]" in d:
                try:
                    i = int(d[1:d.index("]")])
                    lines.append(f"      (statement: {names.get(i, '?')!r:.160})")
                except ValueError:
                    pass
        more = " (first 8)" if len(diffs) >= 8 else ""
        raise AssertionError(f"{what} differs directly vs. through the proxy{more}:\n" + "\n".join(lines))


def compare(steps: Sequence[Step], mode: Mode | str, db: str = "market", user: str = "tidegate",
            conn_kwargs: dict[str, Any] | None = None, switch_servers: bool = True,
            repeat_prepared: bool = True) -> list[dict[str, Any]]:
    """Run the same steps directly and through the proxy; assert identical replies.

    With switch_servers (default) other clients grab the released server connection between
    steps (see ServerSwitcher). In prepared modes the step list runs twice (repeat_prepared), so
    the second pass executes statements prepared earlier, typically on another server connection.
    """
    if isinstance(mode, str):
        mode = MODES[mode]
    if mode.prepare and repeat_prepared:
        # Second pass after a commit (in transaction modes); the offset between the passes is odd,
        # so with the ServerSwitcher alternating between two server connections each statement
        # runs again on the other one.
        steps = list(steps)
        filler = ["select 'second pass'"] if len(steps) % 2 else []
        steps = steps + [NEW_TRANSACTION] + filler + steps
    direct = run_steps(direct_dsn(db, user), steps, mode, conn_kwargs, switch_servers)
    proxied = run_steps(proxy_dsn(db, user), steps, mode, conn_kwargs, switch_servers)
    assert_same(direct, proxied, f"[mode {mode.name}]")
    return direct


# --------------------------------------------------------------------------------------------
# Client binaries

PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"


def client_env(password: str = "tidegate") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10", PGAPPNAME="tg-it-client",
               LC_ALL="C.UTF-8", PGTZ="UTC", PGCLIENTENCODING="UTF8")
    return env


def psql(host: str, port: int, args: list[str], db: str = "market", user: str = "tidegate",
         stdin: bytes | None = None, cwd: Path | None = None, timeout: float = 60):
    if not Path(PSQL).exists():
        pytest.skip("psql not installed")
    cmd = [PSQL, "-X", "-h", host, "-p", str(port), "-U", user, "-d", db] + args
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, cwd=cwd,
                          env=client_env(PASSWORDS.get(user, "")))


# --------------------------------------------------------------------------------------------
# Misc


def run_threads(n: int, target: Callable[[int], None], timeout: float) -> list[BaseException]:
    """Run target(i) in n threads; return the exceptions raised (and a timeout if any hangs)."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True, name=f"client-{i}")
               for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    if hung:
        errors.append(TimeoutError(f"{len(hung)} threads still running after {timeout} s: {hung[:5]}"))
    return errors


def unique_name(prefix: str = "tg_it") -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


# --------------------------------------------------------------------------------------------
# Scratch databases and the tidegate command line


def superuser() -> psycopg.Connection:
    """The lab primary as its superuser (trust on loopback), autocommit."""
    return psycopg.connect(make_dsn(HOST, PRIMARY_PORT, "postgres", "postgres"), autocommit=True)


@contextlib.contextmanager
def scratch_database(prefix: str = "tg_it_db") -> Iterator[str]:
    """A database on the lab primary owned by `tidegate`, dropped (with force) afterwards."""
    name = unique_name(prefix)
    with superuser() as c:
        c.execute(f'create database "{name}" owner tidegate')
    try:
        yield name
    finally:
        with superuser() as c:
            c.execute(f'drop database if exists "{name}" with (force)')


def write_tidegate_config(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The suite's single-node config (with overrides) as a file, for the command-line tools."""
    import yaml  # type: ignore

    path = directory / "tidegate.yaml"
    path.write_text(yaml.safe_dump(tidegate_config(allocate_port("pg"), 0, overrides), sort_keys=False))
    return path


def run_tidegate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs the tidegate binary (skips the test when it is not built)."""
    binary = tidegate_binary()
    if not binary.exists():
        pytest.skip(f"Tidegate binary not found at {binary} (swift build)")
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout, env=_child_env())


def run_migrate(config: Path, db: str, *args: str, directory: Path | None = None) -> subprocess.CompletedProcess:
    """`tidegate migrate` of `db` with the repository's migrations (or `directory`)."""
    return run_tidegate("migrate", "--config", str(config), "--database", db, "--dir",
                        str(directory or REPO / "migrations"), *args)


def redis_up(port: int | None = None) -> bool:
    """A PING to the lab Redis (or another on `port`) answered with PONG."""
    try:
        with socket.create_connection((HOST, port or REDIS_PORT), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def lab_primary_up() -> bool:
    try:
        with psycopg.connect(direct_dsn(connect_timeout=3), autocommit=True) as c:
            c.execute("select 1")
        return True
    except psycopg.Error:
        return False


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    import http.client

    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def admin_query(proxy: Proxy, sql: str, **extra: Any) -> tuple[str | None, list[str], list[tuple]]:
    """One admin-console command (simple protocol): (command tag, column names, rows)."""
    with psycopg.connect(proxy.dsn(proxy.admin_db, "tidegate", **extra), autocommit=True) as c:
        cur = c.execute(sql)
        names = [d.name for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
        return cur.statusmessage, names, rows


def admin_dicts(proxy: Proxy, sql: str, **extra: Any) -> list[dict[str, Any]]:
    _, names, rows = admin_query(proxy, sql, **extra)
    return [dict(zip(names, r)) for r in rows]


def show_nodes(proxy: Proxy) -> dict[str, dict[str, str]]:
    """SHOW NODES keyed by node name; values as text ('' for NULL)."""
    return {str(r["node"]): {k: "" if v is None else str(v) for k, v in r.items()}
            for r in admin_dicts(proxy, "SHOW NODES")}


def nodes_summary(nodes: dict[str, dict[str, str]]) -> str:
    return "; ".join(f"{n}: role={r.get('role')} state={r.get('state')} lag_s={r.get('lag_seconds')} "
                     f"lag_b={r.get('lag_bytes')} error={r.get('error')!r}" for n, r in nodes.items())


def wait_nodes(proxy: Proxy, expect: dict[str, tuple[str | None, str | None]],
               timeout: float = 10.0) -> dict[str, dict[str, str]]:
    """Poll SHOW NODES until every node in `expect` has the given (role, state) (None = any);
    fail with the last SHOW NODES otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            nodes = show_nodes(proxy)
            last = nodes
            if all(n in nodes and (role is None or nodes[n].get("role") == role)
                   and (state is None or nodes[n].get("state") == state)
                   for n, (role, state) in expect.items()):
                return nodes
        except psycopg.Error as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            shown = nodes_summary(last) if isinstance(last, dict) else last
            raise AssertionError(f"SHOW NODES did not reach {expect} within {timeout:.0f} s; "
                                 f"last: {shown}")
        time.sleep(0.1)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Prometheus samples of one metric: [(labels, value)]."""
    import re

    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^%s(\{(.*)\})?\s+(\S+)" % re.escape(name), line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((labels, float(m.group(3))))
    return out


def iter_chunks(data: bytes, size: int) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _main(argv: list[str]) -> int:
    """`python3 Tests/integration/tgharness.py pgbouncer [PORT] [key=value ...]`: run a PgBouncer
    stand-in in the foreground (for TIDEGATE_URL_HOSTPORT=127.0.0.1:PORT); Ctrl-C stops it."""
    import tempfile

    if not argv or argv[0] != "pgbouncer":
        print(_main.__doc__)
        return 2
    port = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else PGBOUNCER_STANDIN_PORT
    overrides: dict[str, Any] = {}
    for a in argv[1:]:
        if "=" in a:
            k, v = a.split("=", 1)
            overrides[k] = int(v) if v.isdigit() else v
    workdir = Path(tempfile.mkdtemp(prefix="tg-pgbouncer-"))
    p = start_pgbouncer(workdir, port, overrides, name="pgbouncer-standin")
    print(f"PgBouncer stand-in on {HOST}:{port} (config {workdir}); "
          f"TIDEGATE_URL_HOSTPORT={HOST}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while p.process is not None and p.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        p.stop()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
