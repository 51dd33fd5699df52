"""the intervention as delivered: therapists' credentials, each child's goals, who was present
and which goals a session worked on, and the treatment-fidelity draws, samples and ratings

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('credential',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('number', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=200), nullable=True),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_reason', sa.String(length=500), nullable=True),
    sa.Column('recorded_by_id', sa.Integer(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['recorded_by_id'], ['user_account.id'], name=op.f('fk_credential_recorded_by_id_user_account')),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_credential_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credential'))
    )
    with op.batch_alter_table('credential', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credential_user_id'), ['user_id'], unique=False)

    op.create_table('fidelity_draw',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('therapist_id', sa.Integer(), nullable=False),
    sa.Column('seed', sa.String(length=64), nullable=False),
    sa.Column('share', sa.Float(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('population', sa.JSON(), nullable=False),
    sa.Column('population_sha256', sa.String(length=64), nullable=False),
    sa.Column('drawn_by_id', sa.Integer(), nullable=True),
    sa.Column('drawn_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['drawn_by_id'], ['user_account.id'], name=op.f('fk_fidelity_draw_drawn_by_id_user_account')),
    sa.ForeignKeyConstraint(['therapist_id'], ['user_account.id'], name=op.f('fk_fidelity_draw_therapist_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fidelity_draw'))
    )
    with op.batch_alter_table('fidelity_draw', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fidelity_draw_therapist_id'), ['therapist_id'], unique=False)

    op.create_table('child_goal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('goal', sa.String(length=32), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('set_on', sa.Date(), nullable=False),
    sa.Column('set_by_id', sa.Integer(), nullable=True),
    sa.Column('changed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_child_goal_participant_id_participant')),
    sa.ForeignKeyConstraint(['set_by_id'], ['user_account.id'], name=op.f('fk_child_goal_set_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_child_goal')),
    sa.UniqueConstraint('participant_id', 'goal', name=op.f('uq_child_goal_participant_id_goal'))
    )
    with op.batch_alter_table('child_goal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_child_goal_participant_id'), ['participant_id'], unique=False)

    op.create_table('fidelity_sample',
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('draw_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['draw_id'], ['fidelity_draw.id'], name=op.f('fk_fidelity_sample_draw_id_fidelity_draw')),
    sa.ForeignKeyConstraint(['session_id'], ['therapy_session.id'], name=op.f('fk_fidelity_sample_session_id_therapy_session')),
    sa.PrimaryKeyConstraint('session_id', name=op.f('pk_fidelity_sample'))
    )
    with op.batch_alter_table('fidelity_sample', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fidelity_sample_draw_id'), ['draw_id'], unique=False)

    op.create_table('fidelity_rating',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('rated_on', sa.Date(), nullable=False),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('mean', sa.Float(), nullable=False),
    sa.Column('adherent', sa.Boolean(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('rated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['rater_id'], ['user_account.id'], name=op.f('fk_fidelity_rating_rater_id_user_account')),
    sa.ForeignKeyConstraint(['session_id'], ['fidelity_sample.session_id'], name=op.f('fk_fidelity_rating_session_id_fidelity_sample')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fidelity_rating')),
    sa.UniqueConstraint('session_id', name=op.f('uq_fidelity_rating_session_id'))
    )
    with op.batch_alter_table('therapy_session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('present', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('goals', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))



def downgrade() -> None:
    with op.batch_alter_table('therapy_session', schema=None) as batch_op:
        batch_op.drop_column('goals')
        batch_op.drop_column('present')

    op.drop_table('fidelity_rating')
    with op.batch_alter_table('fidelity_sample', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fidelity_sample_draw_id'))

    op.drop_table('fidelity_sample')
    with op.batch_alter_table('child_goal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_child_goal_participant_id'))

    op.drop_table('child_goal')
    with op.batch_alter_table('fidelity_draw', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fidelity_draw_therapist_id'))

    op.drop_table('fidelity_draw')
    with op.batch_alter_table('credential', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credential_user_id'))

    op.drop_table('credential')
