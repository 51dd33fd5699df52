"""audit chain head sealed with an HMAC; seals of the head at hard locks

Cutting records off the end of the chain and pointing the head at the new last record used to
verify. The head now carries an HMAC of (seq, hash) under TRIAL_AUDIT_KEY, and each hard lock
seals the head as it stood at signing (audit_seal), so a chain cut back below a lock is detected
even with an old head's values replayed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from trial.audit.service import reseal_head

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_seal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('what', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('mac', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_seal'))
    )
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mac', sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
CREATE TRIGGER audit_seal_no_update_delete BEFORE UPDATE OR DELETE ON audit_seal
    FOR EACH ROW EXECUTE FUNCTION audit_record_refuse_change();
CREATE TRIGGER audit_seal_no_truncate BEFORE TRUNCATE ON audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION audit_record_refuse_change();
""")
    with Session(bind=op.get_bind()) as s:
        reseal_head(s)
        s.flush()


def downgrade() -> None:
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.drop_column('mac')
    op.drop_table('audit_seal')
