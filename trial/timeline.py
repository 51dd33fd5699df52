"""Dates of a participant's trial: randomization day (in the site's time zone), the course and
the visit windows. Arm-independent: the same for every arm."""
from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def add_months(d: dt.date, months: int) -> dt.date:
    """Calendar months, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def local_date(utc: dt.datetime, tz: str) -> dt.date:
    return utc.replace(tzinfo=dt.timezone.utc).astimezone(zoneinfo.ZoneInfo(tz or "UTC")).date()


def today(tz: str | None = None) -> dt.date:
    """Today's date in a site's time zone (UTC when none is given): a date entered at a site is
    never "in the future" just because the site is east of UTC."""
    return local_date(utc_now(), tz) if tz else utc_now().date()


def course_window(start: dt.date, months: int) -> tuple[dt.date, dt.date]:
    """The course runs from the randomization day to the day before the same date ``months`` later."""
    return start, add_months(start, months) - dt.timedelta(days=1)


def visit_window(visit: dict, start: dt.date) -> tuple[dt.date, dt.date, dt.date]:
    target = start + dt.timedelta(days=visit["day"])
    return target - dt.timedelta(days=visit["window_before"]), target, target + dt.timedelta(days=visit["window_after"])


def planned_sessions(sessions_per_week: int, start: dt.date, end: dt.date) -> int:
    weeks = ((end - start).days + 1) / 7
    return round(sessions_per_week * weeks)
