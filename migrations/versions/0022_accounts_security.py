"""accounts a security office accepts: two-factor secrets and recovery codes, signed access
reviews, two-signature unblinding and addendum locks, audit key epochs, per-site query numbers
and random notification references

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (as 0019): no batch copy of a table other tables' rows refer to
    op.add_column('user_account', sa.Column('mfa_secret', sa.String(length=255), nullable=True))
    op.add_column('user_account', sa.Column('mfa_enrolled_at', sa.DateTime(), nullable=True))
    op.add_column('user_account', sa.Column('mfa_last_step', sa.Integer(), nullable=True))
    op.create_table('mfa_recovery_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_mfa_recovery_code_user_id_user_account'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mfa_recovery_code'))
    )
    op.create_index(op.f('ix_mfa_recovery_code_user_id'), 'mfa_recovery_code', ['user_id'], unique=False)
    op.create_table('access_review',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('signed_at', sa.DateTime(), nullable=False),
    sa.Column('inactive_days', sa.Integer(), nullable=False),
    sa.Column('accounts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['signature_id'], ['signature.id'], name=op.f('fk_access_review_signature_id_signature')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_review'))
    )
    op.add_column('data_lock', sa.Column('parent_lock_id', sa.Integer(), nullable=True))
    op.create_table('unblinding_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lock_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=30), nullable=False),
    sa.Column('countersigner_role', sa.String(length=20), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=False),
    sa.Column('requested_at', sa.DateTime(), nullable=False),
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('countersigned_by_id', sa.Integer(), nullable=True),
    sa.Column('countersigned_at', sa.DateTime(), nullable=True),
    sa.Column('countersignature_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['lock_id'], ['data_lock.id'], name=op.f('fk_unblinding_request_lock_id_data_lock')),
    sa.ForeignKeyConstraint(['requested_by_id'], ['user_account.id'],
                            name=op.f('fk_unblinding_request_requested_by_id_user_account')),
    sa.ForeignKeyConstraint(['signature_id'], ['signature.id'], name=op.f('fk_unblinding_request_signature_id_signature')),
    sa.ForeignKeyConstraint(['countersigned_by_id'], ['user_account.id'],
                            name=op.f('fk_unblinding_request_countersigned_by_id_user_account')),
    sa.ForeignKeyConstraint(['countersignature_id'], ['signature.id'],
                            name=op.f('fk_unblinding_request_countersignature_id_signature')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_unblinding_request'))
    )
    op.create_table('audit_key_epoch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('from_seq', sa.Integer(), nullable=False),
    sa.Column('key_check', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_key_epoch')),
    sa.UniqueConstraint('from_seq', name=op.f('uq_audit_key_epoch_from_seq'))
    )
    op.add_column('data_query', sa.Column('number', sa.Integer(), nullable=True))
    # the queries so far numbered per site in the order they were raised
    op.execute("UPDATE data_query SET number = (SELECT count(*) FROM data_query q2 WHERE q2.site_id = data_query.site_id"
               " AND q2.id <= data_query.id)")
    op.create_index('uq_data_query_site_number', 'data_query', ['site_id', 'number'], unique=True)
    op.add_column('notification', sa.Column('ref', sa.String(length=32), nullable=True))
    op.create_index('uq_notification_ref', 'notification', ['ref'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_notification_ref', table_name='notification')
    op.drop_column('notification', 'ref')
    op.drop_index('uq_data_query_site_number', table_name='data_query')
    op.drop_column('data_query', 'number')
    op.drop_table('audit_key_epoch')
    op.drop_table('unblinding_request')
    op.drop_column('data_lock', 'parent_lock_id')
    op.drop_table('access_review')
    op.drop_index(op.f('ix_mfa_recovery_code_user_id'), table_name='mfa_recovery_code')
    op.drop_table('mfa_recovery_code')
    op.drop_column('user_account', 'mfa_last_step')
    op.drop_column('user_account', 'mfa_enrolled_at')
    op.drop_column('user_account', 'mfa_secret')
