"""The record status grid, the manager's overview, a site's page and the recruitment charts."""
from __future__ import annotations

from babel.dates import format_skeleton
from flask import Blueprint, Response, render_template, request, url_for
from flask_babel import format_decimal, get_locale, gettext
from markupsafe import Markup, escape
from sqlalchemy import select

from trial.consent import service as consent
from trial.dashboard import charts, service
from trial.http import actor, day, db, html_dir, lock_notice, number, page_request, plabel, tlabel
from trial.participants.models import Participant
from trial.participants.service import statuses_for
from trial.sites.service import visible_sites

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.route("/", endpoint="grid")
def grid():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "status": request.args.get("status") or None}
    made = service.status_grid(s, actor(), page_request(), **filters)
    _cells_html(made, lock_notice() is None)
    if actor().has_role(*consent.READERS):  # the re-consents and assents due, marked beside the child
        ids = [r["study_id"] for r in made["page"].items]
        kids = list(s.execute(select(Participant).where(Participant.study_id.in_(ids))).scalars()) if ids else []
        due: dict[str, list] = {}
        for d in consent.due_for(s, kids):
            due.setdefault(d["study_id"], []).append(d)
        for r in made["page"].items:
            r["consents_due"] = due.get(r["study_id"], [])
    return render_template("dashboard/grid.html", grid=made, filters=filters, sites=visible_sites(s, actor()),
                           statuses=statuses_for(s, actor()))


DONE = {"entered": "done", "entered_out_of_window": "done_out_of_window"}  # the words a finished form's state shows


def _cells_html(made: dict, writable: bool) -> None:
    """Each cell of the grid as its HTML (``html`` of each row's cells), made here rather than in
    the template: a page of 50 participants has over 500 cells, and Jinja's work on each was most
    of the page's time. Every word comes from the catalogue or the protocol, worked out once a page."""
    columns = made["columns"]
    names = [(plabel("instrument", c["instrument"]).split(" (")[0], plabel("visit", c["visit"])) for c in columns]
    words_of = {st: tlabel("visit_status", DONE.get(st, st)) for st in made["states"]}
    entered = Markup(gettext("%(form)s, %(visit)s: %(state)s %(day)s"))
    windowed = Markup(gettext("%(form)s, %(visit)s: %(state)s (window %(start)s to %(end)s)"))
    plain = Markup(gettext("%(form)s, %(visit)s: %(state)s"))
    queries = gettext("queries not closed")
    verified, not_verified = gettext("✓ verified"), gettext("not verified")
    for r in made["page"].items:
        here = url_for("enrollment.participant", study_id=r["study_id"])
        r["href"] = here
        for i, c in enumerate(r["cells"]):
            col, (form, visit_name) = columns[i], names[i]
            words = words_of.get(c["state"]) or tlabel("visit_status", c["state"])
            if c["assessment_id"]:
                title = entered % {"form": form, "visit": visit_name, "state": words, "day": day(c["on"])}
                inner = Markup('<a href="{}#assessment-{}" title="{}">{}</a>').format(here, c["assessment_id"], title, words)
            elif c["enters"] and writable and c["state"] in ("due", "missing"):
                start, end = c["window"]
                title = (windowed % {"form": form, "visit": visit_name, "state": words, "start": day(start), "end": day(end)}
                         if end else plain % {"form": form, "visit": visit_name, "state": words})
                inner = Markup('<a href="{}" title="{}">{}</a>').format(
                    url_for("enrollment.assess", study_id=r["study_id"], instrument=col["instrument"], visit=col["visit"]),
                    title, words)
            else:
                inner = escape(words)
            if c["queries"]:
                inner += Markup(' <span class="badge" title="{}">{}</span>').format(queries, number(c["queries"]))
            if c["verified"] is not None and c["assessment_id"]:
                inner += Markup(' <span class="{}">{}</span>').format("verified" if c["verified"] else "muted",
                                                                     verified if c["verified"] else not_verified)
            c["html"] = Markup('<td class="cell cell-{}">{}</td>').format(c["state"], inner)


@bp.route("/recruitment.svg")
def recruitment_svg():
    words = {"title": gettext("Recruitment against target by site"), "randomized": gettext("randomized"),
             "enrolled": gettext("enrolled"), "target": gettext("target")}
    svg = service.recruitment_svg(db(), actor(), words, format_decimal, html_dir() == "rtl")
    return Response(svg, mimetype="image/svg+xml")


@bp.route("/overview", endpoint="overview")
def overview():
    return render_template("dashboard/overview.html", o=service.overview(db(), actor()))


@bp.route("/recruitment-over-time.svg", endpoint="recruitment_over_time_svg")
def recruitment_over_time_svg():
    words = {"title": gettext("Randomized by month against each site's target"), "randomized": gettext("randomized"),
             "target": gettext("target"), "total": gettext("All sites"), "of": gettext("%(n)s of %(target)s")}
    svg = service.recruitment_over_time_svg(db(), actor(), words, month_short, format_decimal, html_dir() == "rtl")
    return Response(svg, mimetype="image/svg+xml")


@bp.route("/sites/<code>", endpoint="site")
def site(code):
    made = progress(code)
    return render_template("dashboard/site.html", site=service.site_summary(db(), actor(), code), progress=made)


def month_short(d) -> str:
    """A month (its first day) on a chart's axis, in the page's language ("Sept. 2024", "2024년 9월")."""
    return format_skeleton("yMMM", d, locale=get_locale())


def progress(site_code: str | None = None) -> dict:
    """The trial's (or a site's) recruitment by month and visit completeness, with the chart drawn
    in the page's language and direction and each month named for the table beside it."""
    made = service.progress(db(), actor(), site_code)
    words = {"title": gettext("Recruitment over time"), "randomized": gettext("randomized"), "target": gettext("target"),
             "of": gettext("%(n)s of %(target)s"), "empty": gettext("No child has been randomized yet.")}
    say = charts.Say(words, month_short, format_decimal, html_dir() == "rtl")
    made["chart"] = Markup(charts.cumulative_svg(made["recruitment"], say))
    made["title"] = (gettext("Randomized by month, cumulative, against the target: site %(site)s", site=site_code.upper())
                     if site_code else gettext("Randomized by month, cumulative, against the target: all sites"))
    for r in made["recruitment"]["rows"]:
        r["label"] = format_skeleton("yMMMM", r["month"], locale=get_locale())
    return made
