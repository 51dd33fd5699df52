"""No administrator who can become someone else (issue 26).

The red team's attacks, reproduced: an admin creates an assessor account and corrects an ADOS score
with it; an admin resets an existing user's password and signs in as them; an admin resets (or
deactivates) the only manager. Now an admin never sets or learns a password: a new account and a
reset get a one-time link that only a real SMTP server (the user's mailbox) receives; a data-entry
role waits for a manager's countersignature, which shows exactly who gets which role where, asked by
whom; and the trial always keeps an active manager.
"""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, backdate_randomization
from tests.test_datamanagement import inbox  # noqa: F401  (a real SMTP server, the outbox's relay)
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.auth.models import PasswordReset, RoleGrant, User
from trial.errors import Conflict
from trial.notify.models import MailMessage, Notification
from trial.participants.models import Assessment

LINK = re.compile(r"https://trial\.example\.org/reset-password/([A-Za-z0-9_-]+)")


def web(app, email, password=PASSWORD):
    c = app.test_client()
    r = c.post("/login", data={"email": email, "password": password})
    return c, r


def link_in(inbox, address: str, n: int) -> str:
    """The link of the latest e-mail to ``address`` (after ``n`` e-mails in all have arrived)."""
    inbox.wait(n)
    mails = inbox.to(address)
    assert mails, [m["To"] for m in inbox.messages]
    found = LINK.findall(mails[-1].get_payload(decode=True).decode())
    assert len(found) == 1
    return "/reset-password/" + found[0]


def no_secret(text: str) -> None:
    assert "/reset-password/" not in text and 'type="password"' not in text, text[:3000]


@pytest.fixture()
def child(world, db):
    world.open()
    p = world.ready()
    world.randomize(p, "powers")
    backdate_randomization(db, dt.datetime.combine(dt.date.today() - dt.timedelta(days=61), dt.time(10)))
    db.commit()
    return p


def assess(client, p):
    return client.post(f"/participants/{p.study_id}/assess/ados2", data={
        "visit": "month2", "performed_on": dt.date.today().isoformat(), "v_social_affect": "8", "v_rrb": "3",
        "v_css": "5", "allocation_guess": "unsure", "guess_confidence": "2"})


def _assessments(db) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(Assessment)).scalar()


def test_an_admin_cannot_create_a_data_entry_account_that_works_before_a_manager_countersigns(world, app, db, child,
                                                                                              inbox):
    admin, _ = web(app, "admin@example.org")
    form = admin.get("/admin/users/new").get_data(as_text=True)
    assert 'type="password"' not in form  # no password to choose
    r = admin.post("/admin/users/new", data={"email": "ros@example.org", "name": "Rosa Assessor",
                                             "roles": "assessor@AT01", "password": "admin-knows-this-1"})
    assert r.status_code == 302
    after = admin.get(r.headers["Location"]).get_data(as_text=True)
    assert "ros@example.org created" in after and "waits for a manager" in after
    u = users.get_user_by_email(db, "ros@example.org")
    assert u.role_names() == set() and not users.check_password(u, "admin-knows-this-1")
    for page in (after, admin.get(f"/admin/users/{u.id}").get_data(as_text=True), admin.get("/grants").get_data(as_text=True)):
        no_secret(page)
    assert web(app, "ros@example.org", "admin-knows-this-1")[1].status_code == 401
    # the link reaches the user's mailbox only: not an in-app notice, not the admin
    link = link_in(inbox, "ros@example.org", 1)
    assert [m["To"] for m in inbox.messages] == ["ros@example.org"]
    assert db.execute(select(func.count()).select_from(Notification)).scalar() == 0
    assert app.test_client().post(link, data={"new_password": "violet-harbour-engine-92"}).status_code == 302
    ros, r = web(app, "ros@example.org", "violet-harbour-engine-92")
    assert r.status_code == 302
    # before the countersignature the account enters nothing
    n = _assessments(db)
    assert ros.get(f"/participants/{child.study_id}/assess/ados2").status_code == 403
    assert assess(ros, child).status_code == 403
    assert _assessments(db) == n
    # the manager sees exactly who gets which role where, asked by whom
    mgr, _ = web(app, "manager@example.org")
    grants_page = mgr.get("/grants").get_data(as_text=True)
    assert "Rosa Assessor (ros@example.org) gets the role Blinded assessor at site AT01 (Vienna)" in grants_page
    assert "as asked by admin@example.org" in grants_page
    g = db.execute(select(RoleGrant).where(RoleGrant.user_id == u.id)).scalar_one()
    listed = world.api("GET", "/grants", "manager").get_json()
    assert [(x["name"], x["user"], x["role"], x["site"], x["requested_by"]) for x in listed] == [
        ("Rosa Assessor", "ros@example.org", "assessor", "AT01", "admin@example.org")]
    assert mgr.post(f"/grants/{g.id}/approve", data={"meaning": "Delegation log AT01 checked.",
                                                      "password": PASSWORD}).status_code == 302
    db.expire_all()
    assert db.get(RoleGrant, g.id).status == "approved"
    ros, _ = web(app, "ros@example.org", "violet-harbour-engine-92")
    assert assess(ros, child).status_code == 302
    assert _assessments(db) == n + 1


def test_an_admin_reset_sends_a_link_to_the_user_and_never_to_the_admin(world, app, db, inbox):
    u = world.users["therapist"]
    victim, _ = web(app, "therapist@example.org")
    assert victim.get("/").status_code == 200
    admin, _ = web(app, "admin@example.org")
    page = admin.get(f"/admin/users/{u.id}").get_data(as_text=True)
    assert 'name="reset_password"' in page and 'name="new_password"' not in page
    r = admin.post(f"/admin/users/{u.id}", data={"name": "Therapist", "roles": "therapist@AT01", "active": "y",
                                                 "reset_password": "y", "reason": "forgot it",
                                                 "new_password": "admin-chose-this-1"})
    assert r.status_code == 302
    no_secret(admin.get(r.headers["Location"]).get_data(as_text=True))
    db.expire_all()
    u = db.get(User, u.id)
    assert u.role_names() == {"therapist"}, "the admin learns nothing, so the roles stay"
    for pw in (PASSWORD, "admin-chose-this-1"):
        assert web(app, "therapist@example.org", pw)[1].status_code == 401
    assert victim.get("/").status_code == 302, "every session ended"
    assert world.api("GET", "/me", "therapist").status_code == 401, "and every token"
    link = link_in(inbox, "therapist@example.org", 1)
    actions = {(a.action, a.actor, a.reason) for a in db.execute(select(AuditRecord).where(
        AuditRecord.entity_id == "therapist@example.org", AuditRecord.action.in_(("reset_password", "issue_password_reset"))))
        .scalars()}
    assert ("issue_password_reset", "admin@example.org", "sent to the user's e-mail") in actions
    assert any(a == "reset_password" and who == "admin@example.org" for a, who, _ in actions)
    # only a hash of the link is kept; the outbox is not a page anyone reads
    token = link.rsplit("/", 1)[1]
    assert all(token not in r.token_hash for r in db.execute(select(PasswordReset)).scalars())
    assert app.test_client().post(link, data={"new_password": "copper-lantern-meadow-7"}).status_code == 302
    assert web(app, "therapist@example.org", "copper-lantern-meadow-7")[1].status_code == 302


def test_without_a_mail_relay_the_admin_is_refused_and_nothing_changes(world, app, db):
    admin, _ = web(app, "admin@example.org")
    before = db.execute(select(func.count()).select_from(User)).scalar()
    r = admin.post("/admin/users/new", data={"email": "nomail@example.org", "name": "No Mail", "roles": "monitor@AT01"})
    assert r.status_code == 400 and "TRIAL_SMTP_URL" in r.get_data(as_text=True)
    u = world.users["monitor"]
    r = admin.post(f"/admin/users/{u.id}", data={"name": "Monitor", "roles": "monitor@AT01", "active": "y",
                                                 "reset_password": "y", "reason": "forgot it"})
    assert r.status_code == 400
    db.expire_all()
    assert db.execute(select(func.count()).select_from(User)).scalar() == before
    assert users.check_password(db.get(User, u.id), PASSWORD)
    assert db.execute(select(func.count()).select_from(MailMessage)).scalar() == 0


# --- the trial always keeps an active manager ---------------------------------------------------------

def test_the_last_active_manager_is_neither_deactivated_nor_reset_nor_stripped(world, app, db, inbox):
    m = world.users["manager"]
    admin = world.users["admin"]
    attempts = {
        "deactivate (admin)": lambda: users.deactivate(db, admin, m, reason="left"),
        "deactivate (console)": lambda: users.deactivate(db, CLI, m, reason="left"),
        "reset (admin)": lambda: users.disable_password(db, admin, m),
        "role taken": lambda: users.set_roles(db, admin, m, [("statistician", None)], reason="moved"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(Conflict, match="last active manager") as e:
            attempt()
        assert e.value.code == "last_manager", what
        db.rollback()
    # the admin's pages say so and change nothing
    c, _ = web(app, "admin@example.org")
    r = c.post(f"/admin/users/{m.id}", data={"name": "Manager", "roles": "manager", "reason": "left"})
    assert r.status_code == 400 and "last active manager" in r.get_data(as_text=True)
    r = c.post(f"/admin/users/{m.id}", data={"name": "Manager", "roles": "manager", "active": "y", "reset_password": "y",
                                             "reason": "forgot"})
    assert r.status_code == 400 and "last active manager" in r.get_data(as_text=True)
    db.expire_all()
    assert db.get(User, m.id).active and users.check_password(db.get(User, m.id), PASSWORD)
    assert world.api("GET", "/me", "manager").status_code == 200
    # with a second active manager each is allowed
    users.create_user(db, CLI, "manager2@example.org", "Second Manager", PASSWORD, [("manager", None)])
    db.commit()
    users.disable_password(db, admin, db.get(User, m.id))
    users.deactivate(db, admin, db.get(User, m.id), reason="left")
    db.commit()
    second = users.get_user_by_email(db, "manager2@example.org")
    with pytest.raises(Conflict, match="last active manager"):  # and now the second is the last
        users.deactivate(db, CLI, second, reason="left too")
    db.rollback()
