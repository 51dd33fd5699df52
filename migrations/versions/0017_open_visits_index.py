"""partial indexes of the visits still missing a form (not ended), one per kind of form, in the
worklists' order with what their filter reads: the due and overdue lists take a page, and count,
from one instead of sorting the whole visit plan

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# the visits still missing a form of the kind a reader enters: the coordinators' (other), the
# assessors' (blinded) or either (monitors and managers); a predicate the worklist's filter matches
# exactly, so the planner counts the rows by the index (a comparison of two columns it would guess)
OPEN = {"ix_planned_visit_open_other": "ended IS false AND other_entered < other_forms",
        "ix_planned_visit_open_blinded": "ended IS false AND blinded_entered < blinded_forms",
        "ix_planned_visit_open": "ended IS false AND (other_entered < other_forms OR blinded_entered < blinded_forms)"}


def upgrade() -> None:
    for name, where in OPEN.items():
        op.create_index(name, 'planned_visit', ['visit_idx', 'randomized_at', 'participant_id'], unique=False,
                        postgresql_where=sa.text(where), sqlite_where=sa.text(where),
                        postgresql_include=['site_id', 'opens', 'closes', 'visit'])


def downgrade() -> None:
    for name in OPEN:
        op.drop_index(name, table_name='planned_visit')
