"""seed data: insert customers (a data write, denied at the migrate level)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    customers = sa.table("tw_alembic_customers", sa.column("email", sa.Text), sa.column("name", sa.Text))
    op.bulk_insert(customers, [{"email": "ada@example.com", "name": "Ada"}, {"email": "alan@example.com", "name": "Alan"}])


def downgrade():
    op.execute("DELETE FROM tw_alembic_customers")
