"""Shared by the driver scripts of tests/compat.rs: the environment they are
given (TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA TW_TABLE) and the
`ok <step>` / `FAIL <step>` reporting that tests/compat.rs reads."""

import os
import sys

E = os.environ
TABLE = E["TW_TABLE"]


def fail(what):
    print(f"FAIL {what}", flush=True)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    print(f"ok {what}", flush=True)
