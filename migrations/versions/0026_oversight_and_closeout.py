"""the investigator's oversight and the site's close-out (issue 29): casebook sign-offs at the
protocol's milestones (the e-signature, how far the audit trail had come when signed, and the change
that invalidated it), forms recorded as not done with a reason, randomization errors (the allocation
kept: intention to treat), a hard lock's acceptance of unsigned casebooks, and the site archives built
in the background

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('data_lock', sa.Column('accepted_unsigned', sa.JSON(), nullable=True))
    op.create_table('casebook_signoff',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('milestone', sa.String(length=50), nullable=False),
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('signed_by_id', sa.Integer(), nullable=False),
    sa.Column('signed_at', sa.DateTime(), nullable=False),
    sa.Column('covered_seq', sa.Integer(), nullable=False),
    sa.Column('covered_digest', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('invalidated_at', sa.DateTime(), nullable=True),
    sa.Column('invalidated_seq', sa.Integer(), nullable=True),
    sa.Column('invalidated_change', sa.String(length=300), nullable=True),
    sa.Column('invalidated_words', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_casebook_signoff_participant_id_participant')),
    sa.ForeignKeyConstraint(['signature_id'], ['signature.id'], name=op.f('fk_casebook_signoff_signature_id_signature')),
    sa.ForeignKeyConstraint(['signed_by_id'], ['user_account.id'], name=op.f('fk_casebook_signoff_signed_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_casebook_signoff'))
    )
    op.create_index(op.f('ix_casebook_signoff_participant_id'), 'casebook_signoff', ['participant_id'], unique=False)
    op.create_index(op.f('ix_casebook_signoff_status'), 'casebook_signoff', ['status'], unique=False)
    # one valid signature per child and milestone (two investigators signing at once: one wins)
    op.create_index('uq_casebook_signoff_valid', 'casebook_signoff', ['participant_id', 'milestone'], unique=True,
                    sqlite_where=sa.text("status = 'valid'"), postgresql_where=sa.text("status = 'valid'"))
    op.create_table('not_done',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('visit', sa.String(length=50), nullable=False),
    sa.Column('instrument', sa.String(length=50), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('recorded_by_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_not_done_participant_id_participant')),
    sa.ForeignKeyConstraint(['recorded_by_id'], ['user_account.id'], name=op.f('fk_not_done_recorded_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_not_done')),
    sa.UniqueConstraint('participant_id', 'visit', 'instrument', name=op.f('uq_not_done_participant_id_visit_instrument'))
    )
    op.create_index(op.f('ix_not_done_participant_id'), 'not_done', ['participant_id'], unique=False)
    op.create_table('randomization_error',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('field', sa.String(length=50), nullable=True),
    sa.Column('as_randomized', sa.String(length=100), nullable=True),
    sa.Column('correct_value', sa.String(length=100), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('recorded_by_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_randomization_error_participant_id_participant')),
    sa.ForeignKeyConstraint(['recorded_by_id'], ['user_account.id'], name=op.f('fk_randomization_error_recorded_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_randomization_error'))
    )
    op.create_index(op.f('ix_randomization_error_participant_id'), 'randomization_error', ['participant_id'], unique=False)
    op.create_table('archive_job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('language', sa.String(length=10), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('heartbeat', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], name=op.f('fk_archive_job_site_id_site')),
    sa.ForeignKeyConstraint(['requested_by_id'], ['user_account.id'], name=op.f('fk_archive_job_requested_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_job'))
    )
    op.create_index(op.f('ix_archive_job_status'), 'archive_job', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_archive_job_status'), table_name='archive_job')
    op.drop_table('archive_job')
    op.drop_index(op.f('ix_randomization_error_participant_id'), table_name='randomization_error')
    op.drop_table('randomization_error')
    op.drop_index(op.f('ix_not_done_participant_id'), table_name='not_done')
    op.drop_table('not_done')
    op.drop_index('uq_casebook_signoff_valid', table_name='casebook_signoff')
    op.drop_index(op.f('ix_casebook_signoff_status'), table_name='casebook_signoff')
    op.drop_index(op.f('ix_casebook_signoff_participant_id'), table_name='casebook_signoff')
    op.drop_table('casebook_signoff')
    with op.batch_alter_table('data_lock') as b:
        b.drop_column('accepted_unsigned')
