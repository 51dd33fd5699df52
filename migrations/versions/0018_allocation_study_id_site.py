"""the allocation carries the child's study id and site (copied at randomization; neither ever
changes), with an index in study-id order: the lists of children by arm take a page, and count,
from it instead of joining and sorting every participant

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('allocation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_id', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('site_id', sa.Integer(), nullable=True))
    op.execute("UPDATE allocation SET"
               " study_id = (SELECT p.study_id FROM participant p WHERE p.id = allocation.participant_id),"
               " site_id = (SELECT p.site_id FROM participant p WHERE p.id = allocation.participant_id)")
    with op.batch_alter_table('allocation', schema=None) as batch_op:
        batch_op.alter_column('study_id', existing_type=sa.String(length=20), nullable=False)
        batch_op.alter_column('site_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(batch_op.f('fk_allocation_site_id_site'), 'site', ['site_id'], ['id'])
    op.create_index('ix_allocation_study_id', 'allocation', ['study_id', 'participant_id'], unique=False,
                    postgresql_include=['arm', 'site_id'])
    if op.get_bind().dialect.name == "postgresql":  # the planner's estimates of the new columns, at once
        op.execute("ANALYZE allocation")


def downgrade() -> None:
    op.drop_index('ix_allocation_study_id', table_name='allocation')
    with op.batch_alter_table('allocation', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_allocation_site_id_site'), type_='foreignkey')
        batch_op.drop_column('site_id')
        batch_op.drop_column('study_id')
