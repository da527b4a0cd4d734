"""a migration that fails midway in prod only: it applies in stage (empty
table), but prod holds two customers with the same name, so the unique
index (third statement) fails with 23505 after two statements succeeded

Revision ID: 0005
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("tw_alembic_broken", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("tw_alembic_customers", sa.Column("tier", sa.Text))
    op.create_index("tw_alembic_customers_name_uq", "tw_alembic_customers", ["name"], unique=True)


def downgrade():
    op.drop_index("tw_alembic_customers_name_uq", "tw_alembic_customers")
    op.drop_column("tw_alembic_customers", "tier")
    op.drop_table("tw_alembic_broken")
