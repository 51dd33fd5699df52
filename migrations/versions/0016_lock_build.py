"""hard locks build their bundles in the background: one row per variant with its state,
progress and the worker building it (locks signed before this were built at signing: ready)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lock_build',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lock_id', sa.Integer(), nullable=False),
    sa.Column('variant', sa.String(length=10), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('heartbeat', sa.DateTime(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['lock_id'], ['data_lock.id'], name=op.f('fk_lock_build_lock_id_data_lock')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lock_build')),
    sa.UniqueConstraint('lock_id', 'variant', name=op.f('uq_lock_build_lock_id_variant'))
    )
    op.create_index(op.f('ix_lock_build_lock_id'), 'lock_build', ['lock_id'], unique=False)
    # the bundles of earlier hard locks were built when they were signed
    op.execute("INSERT INTO lock_build (lock_id, variant, status, progress, finished_at) "
               "SELECT lock_id, variant, 'ready', 1.0, created_at FROM lock_bundle")


def downgrade() -> None:
    op.drop_index(op.f('ix_lock_build_lock_id'), table_name='lock_build')
    op.drop_table('lock_build')
