"""create tw_alembic_invoices referencing customers

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tw_alembic_invoices",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("tw_alembic_customers.id"), nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
    )
    op.create_index("tw_alembic_invoices_customer_idx", "tw_alembic_invoices", ["customer_id"])


def downgrade():
    op.drop_table("tw_alembic_invoices")
