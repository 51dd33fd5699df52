"""parents' surveys (issue 28): when a survey's link was last sent (a resend issues a new link and
the reminders count from it), the random nonce its link is derived from with the secret key (so a
reminder can repeat the link; the database never holds the link itself), and the attempts to open or answer a survey kept in the database so
that several app servers share the rate limit per link and per address

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('survey', sa.Column('sent_at', sa.DateTime(), nullable=True))
    op.add_column('survey', sa.Column('token_nonce', sa.String(length=64), nullable=True))
    op.create_index(op.f('ix_survey_status'), 'survey', ['status'], unique=False)
    op.create_table('survey_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('survey_id', sa.Integer(), nullable=True),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_survey_attempt'))
    )
    op.create_index(op.f('ix_survey_attempt_survey_id'), 'survey_attempt', ['survey_id'], unique=False)
    op.create_index(op.f('ix_survey_attempt_remote_addr'), 'survey_attempt', ['remote_addr'], unique=False)
    op.create_index(op.f('ix_survey_attempt_at'), 'survey_attempt', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_survey_attempt_at'), table_name='survey_attempt')
    op.drop_index(op.f('ix_survey_attempt_remote_addr'), table_name='survey_attempt')
    op.drop_index(op.f('ix_survey_attempt_survey_id'), table_name='survey_attempt')
    op.drop_table('survey_attempt')
    op.drop_index(op.f('ix_survey_status'), table_name='survey')
    with op.batch_alter_table('survey') as b:
        b.drop_column('token_nonce')
        b.drop_column('sent_at')
