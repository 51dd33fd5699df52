"""consent and the families (issue 28): the consents each child's family gave (document, version,
language, signer, options), withdrawals of consent with their scope, the languages a site works
in, whether a session was video-recorded, and the parents' surveys; each enrolled child's consent
date becomes the record of the parental consent (version 1) it stood for

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

# a site's first language, from its country, for the sites that exist (the seven of the UI; else English)
COUNTRY_LANGUAGE = {"AT": "de", "DE": "de", "CH": "de", "IT": "it", "NO": "nb", "BR": "pt_BR", "KR": "ko", "IL": "he"}


def upgrade() -> None:
    # plain ADD COLUMNs (as 0019): no batch copy of a table other tables' rows refer to
    op.add_column('site', sa.Column('languages', sa.JSON(), nullable=True))
    op.add_column('therapy_session', sa.Column('video_recorded', sa.Boolean(), nullable=True))
    op.create_table('consent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('document', sa.String(length=50), nullable=False),
    sa.Column('version', sa.String(length=20), nullable=False),
    sa.Column('language', sa.String(length=10), nullable=False),
    sa.Column('signed_on', sa.Date(), nullable=False),
    sa.Column('signer', sa.String(length=10), nullable=False),
    sa.Column('options', sa.JSON(), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('obtained_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_consent_participant_id_participant')),
    sa.ForeignKeyConstraint(['obtained_by_id'], ['user_account.id'], name=op.f('fk_consent_obtained_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent')),
    sa.UniqueConstraint('participant_id', 'document', 'version', 'signer',
                        name=op.f('uq_consent_participant_id_document_version_signer'))
    )
    op.create_index(op.f('ix_consent_participant_id'), 'consent', ['participant_id'], unique=False)
    op.create_table('consent_withdrawal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('on', sa.Date(), nullable=False),
    sa.Column('scope', sa.String(length=20), nullable=False),
    sa.Column('data_use', sa.String(length=30), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('recorded_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'],
                            name=op.f('fk_consent_withdrawal_participant_id_participant')),
    sa.ForeignKeyConstraint(['recorded_by_id'], ['user_account.id'],
                            name=op.f('fk_consent_withdrawal_recorded_by_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_withdrawal'))
    )
    op.create_index(op.f('ix_consent_withdrawal_participant_id'), 'consent_withdrawal', ['participant_id'],
                    unique=False)
    op.create_table('survey',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('visit', sa.String(length=50), nullable=False),
    sa.Column('instrument', sa.String(length=50), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('language', sa.String(length=10), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('first_name', sa.String(length=100), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('opened_at', sa.DateTime(), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('reminders_sent', sa.Integer(), nullable=False),
    sa.Column('last_reminder_at', sa.DateTime(), nullable=True),
    sa.Column('assessment_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['participant_id'], ['participant.id'], name=op.f('fk_survey_participant_id_participant')),
    sa.ForeignKeyConstraint(['created_by_id'], ['user_account.id'], name=op.f('fk_survey_created_by_id_user_account')),
    sa.ForeignKeyConstraint(['assessment_id'], ['assessment.id'], name=op.f('fk_survey_assessment_id_assessment')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_survey')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_survey_token_hash'))
    )
    op.create_index(op.f('ix_survey_participant_id'), 'survey', ['participant_id'], unique=False)
    _backfill()


def _backfill() -> None:
    """Sites' first language from their country; each enrolled child's consent date as the record
    of the parental consent, version 1, in its site's first language (options not recorded then:
    NULL, "not recorded"), obtained by whoever enrolled it, marked `migrated`."""
    conn = op.get_bind()
    site = sa.table('site', sa.column('id', sa.Integer), sa.column('country', sa.String),
                    sa.column('languages', sa.JSON))
    first: dict[int, str] = {}
    for sid, country in conn.execute(sa.select(site.c.id, site.c.country)).all():
        lang = COUNTRY_LANGUAGE.get((country or "").upper(), "en")
        first[sid] = lang
        conn.execute(site.update().where(site.c.id == sid).values(languages=[lang]))
    participant = sa.table('participant', sa.column('id', sa.Integer), sa.column('site_id', sa.Integer),
                           sa.column('consent_date', sa.Date), sa.column('created_by_id', sa.Integer),
                           sa.column('enrolled_at', sa.DateTime))
    consent = sa.table('consent', sa.column('participant_id', sa.Integer), sa.column('document', sa.String),
                       sa.column('version', sa.String), sa.column('language', sa.String),
                       sa.column('signed_on', sa.Date), sa.column('signer', sa.String),
                       sa.column('options', sa.JSON), sa.column('source', sa.String),
                       sa.column('obtained_by_id', sa.Integer), sa.column('created_at', sa.DateTime))
    rows = [{"participant_id": p.id, "document": "parental_consent", "version": "1",
             "language": first.get(p.site_id, "en"), "signed_on": p.consent_date, "signer": "parent",
             "options": None, "source": "migrated", "obtained_by_id": p.created_by_id, "created_at": p.enrolled_at}
            for p in conn.execute(sa.select(participant)).all() if p.consent_date is not None]
    if rows:
        op.bulk_insert(consent, rows)


def downgrade() -> None:
    op.drop_index(op.f('ix_survey_participant_id'), table_name='survey')
    op.drop_table('survey')
    op.drop_index(op.f('ix_consent_withdrawal_participant_id'), table_name='consent_withdrawal')
    op.drop_table('consent_withdrawal')
    op.drop_index(op.f('ix_consent_participant_id'), table_name='consent')
    op.drop_table('consent')
    op.drop_column('therapy_session', 'video_recorded')
    op.drop_column('site', 'languages')
