"""partial indexes: the visits with a form entered outside its window (the out-of-window
worklist reads them without a scan of the visit plan) and the queries an assessor may read (their
list's total without a scan of every query)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_planned_visit_late', 'planned_visit', ['site_id'], unique=False,
                    postgresql_where=sa.text('blinded_late OR other_late'), sqlite_where=sa.text('blinded_late OR other_late'))
    op.create_index('ix_data_query_assessor', 'data_query', ['site_id'], unique=False,
                    postgresql_where=sa.text('assessor_visible'), sqlite_where=sa.text('assessor_visible'))


def downgrade() -> None:
    op.drop_index('ix_data_query_assessor', table_name='data_query')
    op.drop_index('ix_planned_visit_late', table_name='planned_visit')
