"""add tw_alembic_customers.name with a default, and a check constraint

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tw_alembic_customers", sa.Column("name", sa.Text, nullable=False, server_default=""))
    op.create_check_constraint("tw_alembic_invoices_amount_ck", "tw_alembic_invoices", "amount_cents >= 0")


def downgrade():
    op.drop_constraint("tw_alembic_invoices_amount_ck", "tw_alembic_invoices")
    op.drop_column("tw_alembic_customers", "name")
