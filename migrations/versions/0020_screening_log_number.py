"""the site's own screening-log number on a screening: optional, each used once at a site

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (as 0019): no batch copy of a table other tables' rows refer to
    op.add_column('screening', sa.Column('log_number', sa.String(length=40), nullable=True))
    op.create_index('uq_screening_site_log_number', 'screening', ['site_id', 'log_number'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_screening_site_log_number', table_name='screening')
    op.drop_column('screening', 'log_number')
