"""interim looks and data sharing (issue 30): data cuts (a consistent snapshot of the live data,
built in the background, its digest kept), the data monitoring committee's e-signed recommendations,
and the de-identified sharing bundles of a locked and unblinded trial

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('data_cut',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('snapshot_at', sa.DateTime(), nullable=True),
    sa.Column('audit_seq', sa.Integer(), nullable=True),
    sa.Column('protocol_version', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('heartbeat', sa.DateTime(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['requested_by_id'], ['user_account.id'], name=op.f('fk_data_cut_requested_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_cut'))
    )
    op.create_index(op.f('ix_data_cut_status'), 'data_cut', ['status'], unique=False)
    op.create_table('dmc_recommendation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('data_cut_id', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('signed_by_id', sa.Integer(), nullable=False),
    sa.Column('signed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['data_cut_id'], ['data_cut.id'], name=op.f('fk_dmc_recommendation_data_cut_id_data_cut')),
    sa.ForeignKeyConstraint(['signature_id'], ['signature.id'], name=op.f('fk_dmc_recommendation_signature_id_signature')),
    sa.ForeignKeyConstraint(['signed_by_id'], ['user_account.id'], name=op.f('fk_dmc_recommendation_signed_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dmc_recommendation'))
    )
    op.create_index(op.f('ix_dmc_recommendation_data_cut_id'), 'dmc_recommendation', ['data_cut_id'], unique=False)
    op.create_table('sharing_bundle',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lock_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('disclosure', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['lock_id'], ['data_lock.id'], name=op.f('fk_sharing_bundle_lock_id_data_lock')),
    sa.ForeignKeyConstraint(['requested_by_id'], ['user_account.id'], name=op.f('fk_sharing_bundle_requested_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sharing_bundle'))
    )
    op.create_index(op.f('ix_sharing_bundle_lock_id'), 'sharing_bundle', ['lock_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_sharing_bundle_lock_id'), table_name='sharing_bundle')
    op.drop_table('sharing_bundle')
    op.drop_index(op.f('ix_dmc_recommendation_data_cut_id'), table_name='dmc_recommendation')
    op.drop_table('dmc_recommendation')
    op.drop_index(op.f('ix_data_cut_status'), table_name='data_cut')
    op.drop_table('data_cut')
