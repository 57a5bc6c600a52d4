#!/usr/bin/env python3
"""Hold N authenticated, idle client connections open against a PostgreSQL-protocol
endpoint and measure the memory the target process spends on them.

Each connection does the full startup + authentication (SCRAM-SHA-256, also MD5 and
cleartext if asked) with raw sockets, waits for ReadyForQuery and then stays idle. While
all of them are held, one extra connection runs `SELECT 1` to show the target still serves
queries. The target's RSS (VmRSS from /proc/<pid>/status, --pid) is sampled before opening,
while holding and after closing; the report is (held - before) / connections.

Python standard library only. Bounded in time (--timeout) and closes every socket it
opened. The *server* side needs enough file descriptors too (PgBouncer: max_client_conn and
its ulimit -n; Tidegate: listen.max_client_connections and its ulimit -n); the script warns
when /proc/<pid>/limits shows a soft limit that is too low.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import signal
import struct
import sys
import time

PROTOCOL_3_0 = 196608


class PgError(Exception):
    pass


def parse_error(payload: bytes) -> str:
    fields = {}
    for part in payload.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


class Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it (no channel binding)."""

    _salted_cache = {}

    def __init__(self, password: str):
        self.password = password.encode()  # SASLprep is the identity for ASCII passwords
        self.client_nonce = base64.b64encode(os.urandom(18)).decode()
        # PostgreSQL takes the user from the startup packet; the SCRAM user name is left empty.
        self.client_first_bare = f"n=,r={self.client_nonce}"

    def client_first(self) -> bytes:
        return ("n,," + self.client_first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        self.server_first = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in self.server_first.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.client_nonce):
            raise PgError("SCRAM: server nonce does not extend the client nonce")
        key = (self.password, salt, iterations)
        salted = self._salted_cache.get(key)
        if salted is None:
            salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
            self._salted_cache[key] = salted
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        without_proof = f"c=biws,r={nonce}"
        self.auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        if "e" in attrs:
            raise PgError(f"SCRAM: server error {attrs['e']}")
        expected = hmac.new(self.server_key, self.auth_message, hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), expected):
            raise PgError("SCRAM: bad server signature")


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.params = {}

    async def read_message(self):
        header = await self.reader.readexactly(5)
        length = struct.unpack("!i", header[1:5])[0]
        if length < 4 or length > 1 << 24:
            raise PgError(f"bad message length {length}")
        return header[:1], await self.reader.readexactly(length - 4)

    @classmethod
    async def open(cls, host, port, user, password, database, app):
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
        conn = cls(reader, writer)
        try:
            await conn._startup(user, password, database, app)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _startup(self, user, password, database, app):
        params = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in (
            ("user", user), ("database", database), ("application_name", app)))
        body = struct.pack("!i", PROTOCOL_3_0) + params + b"\x00"
        self.writer.write(struct.pack("!i", len(body) + 4) + body)
        scram = None
        while True:
            kind, payload = await self.read_message()
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code == 0:
                    continue
                if code == 3:  # cleartext
                    self.writer.write(message(b"p", password.encode() + b"\x00"))
                elif code == 5:  # md5
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                    self.writer.write(message(b"p", b"md5" + outer.encode() + b"\x00"))
                elif code == 10:  # SASL
                    mechs = [m.decode() for m in payload[4:].split(b"\x00") if m]
                    if "SCRAM-SHA-256" not in mechs:
                        raise PgError(f"no supported SASL mechanism in {mechs}")
                    scram = Scram(password)
                    first = scram.client_first()
                    self.writer.write(message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
                elif code == 11:  # SASLContinue
                    self.writer.write(message(b"p", scram.client_final(payload[4:])))
                elif code == 12:  # SASLFinal
                    scram.verify_final(payload[4:])
                else:
                    raise PgError(f"unsupported authentication request {code}")
            elif kind == b"E":
                raise PgError(parse_error(payload))
            elif kind == b"S":
                k, v = payload.rstrip(b"\x00").split(b"\x00", 1)
                self.params[k.decode()] = v.decode()
            elif kind == b"Z":
                return
            # 'K' BackendKeyData, 'N' NoticeResponse, anything else: ignore

    async def simple_query(self, sql):
        self.writer.write(message(b"Q", sql.encode() + b"\x00"))
        rows, error = [], None
        while True:
            kind, payload = await self.read_message()
            if kind == b"D":
                n = struct.unpack("!h", payload[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", payload[pos:pos + 4])[0]
                    pos += 4
                    row.append(None if ln < 0 else payload[pos:pos + ln].decode())
                    pos += max(ln, 0)
                rows.append(row)
            elif kind == b"E":
                error = parse_error(payload)
            elif kind == b"Z":
                if error:
                    raise PgError(error)
                return rows

    def alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def close(self):
        try:
            if not self.writer.is_closing():
                self.writer.write(message(b"X", b""))
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    def abort(self):
        try:
            self.writer.transport.abort()
        except Exception:
            pass


def rss_kib(pid):
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def target_nofile(pid):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


async def run(args, result):
    conns = []
    errors = {}
    sem = asyncio.Semaphore(args.concurrency)
    result["rss_before_kib"] = rss_kib(args.pid)

    async def open_one(i):
        async with sem:
            try:
                c = await asyncio.wait_for(
                    Conn.open(args.host, args.port, args.user, args.password, args.database, args.application_name),
                    args.connect_timeout)
                conns.append(c)
            except Exception as e:  # noqa: BLE001 - counted and reported
                msg = str(e) or type(e).__name__
                errors[msg] = errors.get(msg, 0) + 1

    t0 = time.monotonic()
    tasks = []
    try:
        tasks = [asyncio.ensure_future(open_one(i)) for i in range(args.clients)]
        last = t0
        while True:
            done = sum(t.done() for t in tasks)
            if done == len(tasks):
                break
            if not args.quiet and time.monotonic() - last >= 5:
                last = time.monotonic()
                print(f"  ... {len(conns)} connected, {sum(errors.values())} failed", file=sys.stderr)
            await asyncio.sleep(0.2)
        result["connect_seconds"] = round(time.monotonic() - t0, 2)
        result["connected"] = len(conns)
        result["connect_errors"] = errors
        if not args.quiet:
            print(f"  {len(conns)}/{args.clients} idle connections authenticated in {result['connect_seconds']} s"
                  + (f"; failures: {errors}" if errors else ""), file=sys.stderr)

        # Hold them; sample RSS a few times and keep the last (settled) value.
        samples = []
        end = time.monotonic() + args.hold
        while True:
            samples.append(rss_kib(args.pid))
            if time.monotonic() >= end:
                break
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        result["rss_held_kib"] = samples[-1]
        result["rss_held_max_kib"] = max((s for s in samples if s is not None), default=None)

        # One more normal connection must still work while all idle ones are held.
        try:
            extra = await asyncio.wait_for(
                Conn.open(args.host, args.port, args.user, args.password, args.database, "idle-clients-check"),
                args.connect_timeout)
            try:
                rows = await asyncio.wait_for(extra.simple_query("SELECT 1"), args.connect_timeout)
                result["query_ok"] = rows == [["1"]]
                result["query_result"] = rows
            finally:
                await extra.close()
        except Exception as e:  # noqa: BLE001
            result["query_ok"] = False
            result["query_error"] = str(e) or type(e).__name__

        result["still_open"] = sum(c.alive() for c in conns)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        closing = conns[:]
        conns.clear()
        await asyncio.gather(*(c.close() for c in closing), return_exceptions=True)

    await asyncio.sleep(args.settle)
    result["rss_after_close_kib"] = rss_kib(args.pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="tidegate")
    ap.add_argument("--password", default=os.environ.get("PGPASSWORD", "tidegate"))
    ap.add_argument("--database", default="bench")
    ap.add_argument("--application-name", default="idle-clients")
    ap.add_argument("-n", "--clients", type=int, default=5000, help="idle connections to hold (default 5000)")
    ap.add_argument("--pid", type=int, help="pid of the target process whose VmRSS is measured")
    ap.add_argument("--label", default=None, help="name of the target in the report")
    ap.add_argument("--concurrency", type=int, default=64, help="connection attempts in flight (default 64)")
    ap.add_argument("--connect-timeout", type=float, default=15.0, help="per connection, seconds (default 15)")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold all connections before measuring (default 5)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after closing before the last RSS sample (default 2)")
    ap.add_argument("--timeout", type=float, default=300.0, help="hard limit for the whole run, seconds (default 300)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()

    label = args.label or f"{args.host}:{args.port}"
    result = {"label": label, "host": args.host, "port": args.port, "pid": args.pid, "clients": args.clients}

    soft, hard = raise_fd_limit(args.clients + 64)
    result["client_nofile"] = soft
    warnings = []
    if soft != resource.RLIM_INFINITY and soft < args.clients + 16:
        warnings.append(f"client fd limit is {soft} (hard {hard}); cannot hold {args.clients} connections — raise ulimit -Hn")
    if args.pid:
        if not os.path.exists(f"/proc/{args.pid}"):
            print(f"error: no process {args.pid}", file=sys.stderr)
            return 2
        srv = target_nofile(args.pid)
        result["target_nofile"] = srv
        if srv is not None and srv < args.clients + 16:
            warnings.append(f"target pid {args.pid} has a soft fd limit of {srv}; it cannot accept {args.clients} clients "
                            "(the server side must allow it too: ulimit -n / max_client_conn / max_client_connections)")
    result["warnings"] = warnings
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    # SIGTERM (e.g. from `timeout` or bench-idle's cleanup) closes the connections like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(args, result), args.timeout))
    except asyncio.TimeoutError:
        result["error"] = f"timed out after {args.timeout} s (connections closed)"
    except KeyboardInterrupt:
        result["error"] = "interrupted"
    result["elapsed_seconds"] = round(time.monotonic() - t0, 2)

    before, held, n = result.get("rss_before_kib"), result.get("rss_held_kib"), result.get("connected", 0)
    if before is not None and held is not None and n:
        result["delta_kib"] = held - before
        result["per_client_kib"] = round((held - before) / n, 2)
    ok = (not result.get("error") and n == args.clients and result.get("query_ok")
          and result.get("still_open") == n)
    result["ok"] = bool(ok)

    if args.json:
        print(json.dumps(result))
    else:
        mib = lambda k: "n/a" if k is None else f"{k / 1024:.1f} MiB"  # noqa: E731
        print(f"{label}: {n}/{args.clients} idle clients held ({result.get('still_open', 0)} still open at the end),"
              f" connect {result.get('connect_seconds', '?')} s")
        print(f"  RSS before {mib(before)}, holding {mib(held)}, after close {mib(result.get('rss_after_close_kib'))}")
        if "per_client_kib" in result:
            print(f"  memory per idle client: {result['per_client_kib']:.2f} KiB")
        if "query_ok" in result:
            q = "ok" if result["query_ok"] else f"FAILED {result.get('query_error', result.get('query_result'))}"
        else:
            q = "not run"
        print(f"  SELECT 1 while held: {q}")
        if result.get("connect_errors"):
            print(f"  connection failures: {result['connect_errors']}")
        if result.get("error"):
            print(f"  error: {result['error']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
