"""the visit plan: each randomized child's visits with their windows and forms entered (the worklists' index)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

The rows are derived from the allocations, assessments and status events under the protocol in
force; this migration fills the table for the data already there (the same rule as
trial.visitplan.service.derive, written out here so that the migration stays as it is when the
code moves on).
"""
import datetime as dt
import hashlib
import json
import zoneinfo

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('planned_visit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('visit', sa.String(length=32), nullable=False),
    sa.Column('visit_idx', sa.Integer(), nullable=False),
    sa.Column('randomized_at', sa.DateTime(), nullable=False),
    sa.Column('opens', sa.Date(), nullable=False),
    sa.Column('target', sa.Date(), nullable=False),
    sa.Column('closes', sa.Date(), nullable=False),
    sa.Column('ended', sa.Boolean(), nullable=False),
    sa.Column('blinded_forms', sa.Integer(), nullable=False),
    sa.Column('blinded_entered', sa.Integer(), nullable=False),
    sa.Column('blinded_late', sa.Boolean(), nullable=False),
    sa.Column('other_forms', sa.Integer(), nullable=False),
    sa.Column('other_entered', sa.Integer(), nullable=False),
    sa.Column('other_late', sa.Boolean(), nullable=False),
    sa.Column('protocol_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_planned_visit_participant_id_participant')),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], name=op.f('fk_planned_visit_site_id_site')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_planned_visit')),
    sa.UniqueConstraint('participant_id', 'visit', name=op.f('uq_planned_visit_participant_id_visit'))
    )
    with op.batch_alter_table('planned_visit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_planned_visit_participant_id'), ['participant_id'], unique=False)
        batch_op.create_index('ix_planned_visit_worklist', ['ended', 'closes'], unique=False)
    op.create_table('visit_plan_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('protocol_version', sa.Integer(), nullable=False),
    sa.Column('sites_key', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_visit_plan_state'))
    )
    _fill()


def _fill() -> None:
    conn = op.get_bind()
    pv = conn.execute(sa.text("SELECT version, content FROM protocol_version ORDER BY version DESC LIMIT 1")).first()
    if pv is None:
        return
    content = pv.content if isinstance(pv.content, dict) else json.loads(pv.content)
    tzs = dict(conn.execute(sa.text("SELECT id, timezone FROM site")).all())
    entered = {(r[0], r[1], r[2]): bool(r[3]) for r in conn.execute(sa.text(
        "SELECT participant_id, visit, instrument, out_of_window FROM assessment"))}
    final: dict = {}
    for pid, on in conn.execute(sa.text("SELECT participant_id, \"on\" FROM status_event WHERE type IN ('withdrawn', 'died')")):
        on = on if isinstance(on, dt.date) else dt.date.fromisoformat(on)
        final[pid] = min(on, final.get(pid, on))
    cols = ('participant_id', 'site_id', 'visit', 'visit_idx', 'randomized_at', 'opens', 'target', 'closes', 'ended',
            'blinded_forms', 'blinded_entered', 'blinded_late', 'other_forms', 'other_entered', 'other_late',
            'protocol_version')
    table = sa.table('planned_visit', *[sa.column(c) for c in cols])
    rows = []
    for pid, at, site_id in conn.execute(sa.text(
            "SELECT a.participant_id, a.randomized_at, p.site_id FROM allocation a JOIN participant p ON p.id = a.participant_id")):
        at = at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(at)
        start = at.replace(tzinfo=dt.timezone.utc).astimezone(zoneinfo.ZoneInfo(tzs[site_id] or "UTC")).date()
        for idx, v in enumerate(content["visits"]):
            if v["key"] == "baseline":
                continue
            target = start + dt.timedelta(days=v["day"])
            lo, hi = target - dt.timedelta(days=v["window_before"]), target + dt.timedelta(days=v["window_after"])
            row = {"participant_id": pid, "site_id": site_id, "visit": v["key"], "visit_idx": idx, "randomized_at": at,
                   "opens": lo, "target": target, "closes": hi, "ended": pid in final and final[pid] <= hi,
                   "blinded_forms": 0, "blinded_entered": 0, "blinded_late": False,
                   "other_forms": 0, "other_entered": 0, "other_late": False, "protocol_version": pv.version}
            for ins in content["instruments"]:
                if v["key"] not in ins["visits"]:
                    continue
                kind = "blinded" if ins["blinded"] else "other"
                row[f"{kind}_forms"] += 1
                late = entered.get((pid, v["key"], ins["key"]))
                if late is not None:
                    row[f"{kind}_entered"] += 1
                    row[f"{kind}_late"] = row[f"{kind}_late"] or late
            rows.append(row)
        if len(rows) >= 5000:
            op.bulk_insert(table, rows)
            rows = []
    if rows:
        op.bulk_insert(table, rows)
    # what the plan was derived under (as trial.visitplan.service.sites_key writes it)
    sites = [tuple(r) for r in conn.execute(sa.text("SELECT id, timezone FROM site ORDER BY id"))]
    op.bulk_insert(sa.table('visit_plan_state', sa.column('id'), sa.column('protocol_version'), sa.column('sites_key')),
                   [{"id": 1, "protocol_version": pv.version, "sites_key": hashlib.sha256(repr(sites).encode()).hexdigest()}])


def downgrade() -> None:
    op.drop_table('visit_plan_state')
    with op.batch_alter_table('planned_visit', schema=None) as batch_op:
        batch_op.drop_index('ix_planned_visit_worklist')
        batch_op.drop_index(batch_op.f('ix_planned_visit_participant_id'))
    op.drop_table('planned_visit')
