"""operations: randomization held after a restore until reconciled with the allocation journal,
slots reserved by the journal for children the backup lacks, mail kinds with backoff and dead
letters, and the time a lock's build was queued (a build nobody picks up is restarted)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (as 0019): no batch copy of a table other tables' rows refer to
    op.add_column('trial_state', sa.Column('randomization_hold', sa.String(length=300), nullable=True))
    op.add_column('trial_state', sa.Column('randomization_hold_at', sa.DateTime(), nullable=True))
    op.add_column('mail_outbox', sa.Column('kind', sa.String(length=30), nullable=True))
    op.add_column('mail_outbox', sa.Column('next_attempt_at', sa.DateTime(), nullable=True))
    op.add_column('mail_outbox', sa.Column('dead_at', sa.DateTime(), nullable=True))
    # the recipient's account and the site an e-mail is about: an arm is sent only to whoever may
    # still know it when the message leaves (checked again at each attempt)
    op.add_column('mail_outbox', sa.Column('user_id', sa.Integer(), nullable=True))
    op.add_column('mail_outbox', sa.Column('site_id', sa.Integer(), nullable=True))
    op.add_column('lock_build', sa.Column('queued_at', sa.DateTime(), nullable=True))
    # an allocation's journal line, written in the allocation's transaction and deleted once
    # appended to the journal file: a line a process could not append (killed after the COMMIT, a
    # full disk) is appended by the next process that looks
    op.create_table('allocation_journal_pending',
    sa.Column('allocation_id', sa.Integer(), nullable=False),
    sa.Column('line', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['allocation_id'], ['allocation.id'],
                            name=op.f('fk_allocation_journal_pending_allocation_id_allocation')),
    sa.PrimaryKeyConstraint('allocation_id', name=op.f('pk_allocation_journal_pending'))
    )
    op.create_table('allocation_reservation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.String(length=20), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('stratum_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('arm', sa.String(length=50), nullable=False),
    sa.Column('screening_log_number', sa.String(length=40), nullable=True),
    sa.Column('randomized_at', sa.DateTime(), nullable=False),
    sa.Column('journal_line', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], name=op.f('fk_allocation_reservation_site_id_site')),
    sa.ForeignKeyConstraint(['stratum_id'], ['stratum.id'], name=op.f('fk_allocation_reservation_stratum_id_stratum')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_allocation_reservation')),
    sa.UniqueConstraint('study_id', name=op.f('uq_allocation_reservation_study_id')),
    sa.UniqueConstraint('stratum_id', 'seq', name=op.f('uq_allocation_reservation_stratum_id_seq'))
    )


def downgrade() -> None:
    op.drop_table('allocation_reservation')
    op.drop_table('allocation_journal_pending')
    op.drop_column('lock_build', 'queued_at')
    op.drop_column('mail_outbox', 'site_id')
    op.drop_column('mail_outbox', 'user_id')
    op.drop_column('mail_outbox', 'dead_at')
    op.drop_column('mail_outbox', 'next_attempt_at')
    op.drop_column('mail_outbox', 'kind')
    op.drop_column('trial_state', 'randomization_hold_at')
    op.drop_column('trial_state', 'randomization_hold')
