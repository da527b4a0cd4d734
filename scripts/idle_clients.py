#!/usr/bin/env python3
"""Open N idle PostgreSQL sessions and report the RSS of a process.

Used by scripts/bench.sh: opens N client sessions (startup + SCRAM-SHA-256,
MD5 or cleartext authentication, up to ReadyForQuery) against host:port,
keeps them all open, waits a moment, reads VmRSS/VmHWM of --pid from
/proc/<pid>/status, then closes every session (Terminate) and prints one
JSON line: {"opened": n, "failed": n, "rss_before_kib": .., "rss_kib": ..,
"hwm_kib": .., "seconds": ..}. Standard library only; 127.0.0.1 only.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time

SALTED = {}  # (password, salt, iterations) -> salted password


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


async def read_msg(reader):
    head = await reader.readexactly(5)
    tag, length = head[:1], struct.unpack("!i", head[1:])[0]
    if length < 4 or length > 1 << 20:
        raise RuntimeError(f"bad message length {length}")
    return tag, await reader.readexactly(length - 4)


def msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('C', '?')}: {fields.get('M', '?')}"


async def scram(reader, writer, password, mechanisms):
    if b"SCRAM-SHA-256" not in mechanisms:
        raise RuntimeError(f"no SCRAM-SHA-256 in {mechanisms!r}")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    writer.write(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    tag, body = await read_msg(reader)
    if tag == b"E":
        raise RuntimeError(error_text(body))
    if tag != b"R" or struct.unpack("!i", body[:4])[0] != 11:
        raise RuntimeError("expected SASLContinue")
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
    if not attrs["r"].startswith(nonce):
        raise RuntimeError("server nonce does not extend ours")
    key = (password, attrs["s"], iters)
    if key not in SALTED:
        SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    salted = SALTED[key]
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    final_wo_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
    sig = hmac.new(stored, auth_msg, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    final = f"{final_wo_proof},p={base64.b64encode(proof).decode()}".encode()
    writer.write(msg(b"p", final))


async def open_session(args):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    params = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", args.user), ("database", args.database),
                     ("application_name", "tierwarden-bench-idle"))
    ) + b"\0"
    body = struct.pack("!i", 196608) + params
    writer.write(struct.pack("!i", len(body) + 4) + body)
    while True:
        tag, body = await read_msg(reader)
        if tag == b"E":
            raise RuntimeError(error_text(body))
        if tag == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code == 10:
                await scram(reader, writer, args.password, body[4:])
            elif code == 3:
                writer.write(msg(b"p", args.password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5((args.password + args.user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                writer.write(msg(b"p", b"md5" + outer.encode() + b"\0"))
            elif code not in (0, 11, 12):
                raise RuntimeError(f"unsupported authentication request {code}")
        elif tag == b"Z":
            return reader, writer


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--pid", type=int, required=True, help="process whose RSS is read")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    args.password = os.environ.get("PGPASSWORD", "")
    if args.host != "127.0.0.1":
        sys.exit("loopback only")

    rss_before = status_kib(args.pid, "VmRSS")
    started = time.monotonic()
    gate = asyncio.Semaphore(args.concurrency)
    errors = []

    async def one():
        async with gate:
            try:
                return await asyncio.wait_for(open_session(args), 30)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                errors.append(repr(e))
                return None

    results = await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(args.n))), args.timeout
    )
    sessions = [s for s in results if s is not None]
    opened_in = time.monotonic() - started
    await asyncio.sleep(args.settle)
    rss = status_kib(args.pid, "VmRSS")
    hwm = status_kib(args.pid, "VmHWM")
    for reader, writer in sessions:
        writer.write(msg(b"X", b""))
        writer.close()
    for _, writer in sessions:
        try:
            await writer.wait_closed()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
    print(json.dumps({
        "opened": len(sessions),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "rss_before_kib": rss_before,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "seconds": round(opened_in, 2),
    }))


if __name__ == "__main__":
    asyncio.run(main())
