"""alembic environment for tierwarden's migration-tool test.

Connects through the proxy with psycopg 3 (SQLAlchemy `postgresql+psycopg`)
using TLS verify-full; every revision of one `upgrade` runs in a single
transaction (alembic's default on PostgreSQL), so a failure leaves nothing.

Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA.
"""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

E = os.environ


def run_migrations_online():
    url = URL.create(
        "postgresql+psycopg",
        username=E["TW_USER"],
        password=E["TW_PASSWORD"],
        host=E["TW_HOST"],
        port=int(E["TW_PORT"]),
        database=E["TW_DB"],
        query={"sslmode": "verify-full", "sslrootcert": E["TW_CA"], "connect_timeout": "10"},
    )
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used by this test")
run_migrations_online()
