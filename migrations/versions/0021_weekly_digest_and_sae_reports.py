"""the weekly digest e-mail (opt-out per user, and the week last sent), and the onward reports of a
serious adverse event (to whom, when, the recipient's reference number)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (as 0019): no batch copy of a table other tables' rows refer to
    op.add_column('user_account', sa.Column('weekly_digest', sa.Boolean(), server_default=sa.true(),
                                            nullable=False))
    op.add_column('user_account', sa.Column('digest_week', sa.Date(), nullable=True))
    op.create_table('adverse_event_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adverse_event_id', sa.Integer(), nullable=False),
    sa.Column('reported_to', sa.String(length=20), nullable=False),
    sa.Column('reported_at', sa.DateTime(), nullable=False),
    sa.Column('reference', sa.String(length=80), nullable=False),
    sa.Column('recorded_by_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['adverse_event_id'], ['adverse_event.id'],
                            name=op.f('fk_adverse_event_report_adverse_event_id_adverse_event')),
    sa.ForeignKeyConstraint(['recorded_by_id'], ['user_account.id'],
                            name=op.f('fk_adverse_event_report_recorded_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adverse_event_report'))
    )
    op.create_index(op.f('ix_adverse_event_report_adverse_event_id'), 'adverse_event_report',
                    ['adverse_event_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_adverse_event_report_adverse_event_id'), table_name='adverse_event_report')
    op.drop_table('adverse_event_report')
    op.drop_column('user_account', 'digest_week')
    op.drop_column('user_account', 'weekly_digest')
