"""each child's sessions counted (attended in the course, logged), kept by the session writers; the
query list's index (newest first)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('course_tally',
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('attended', sa.Integer(), nullable=False),
    sa.Column('logged', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_course_tally_participant_id_participant')),
    sa.PrimaryKeyConstraint('participant_id', name=op.f('pk_course_tally'))
    )
    op.execute("INSERT INTO course_tally (participant_id, attended, logged) "
               "SELECT participant_id, SUM(CASE WHEN attendance = 'attended' AND NOT outside_course THEN 1 ELSE 0 END), "
               "COUNT(*) FROM therapy_session GROUP BY participant_id")
    with op.batch_alter_table('data_query', schema=None) as batch_op:
        batch_op.create_index('ix_data_query_raised', ['raised_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('data_query', schema=None) as batch_op:
        batch_op.drop_index('ix_data_query_raised')
    op.drop_table('course_tally')
