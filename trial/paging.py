"""Paged, sorted lists built in the database: a page of a query costs one COUNT and one
LIMIT/OFFSET query, whatever the size of the trial, and nothing of the whole list is loaded into
Python. Each list declares the columns it may be sorted by; a request names one of them (``-`` in
front for descending), anything else is a 400 naming the parameter."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from trial.catalogue import N_, Msg
from trial.errors import ValidationError

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200


@dataclass(frozen=True)
class PageRequest:
    """What a reader asked of a list: which page, how many a page, which sort."""
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    sort: str | None = None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


@dataclass
class Page:
    items: list[Any]
    total: int
    request: PageRequest
    sort: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def page(self) -> int:
        return self.request.page

    @property
    def per_page(self) -> int:
        return self.request.per_page

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def first(self) -> int:
        return min(self.total, self.request.offset + 1)

    @property
    def last(self) -> int:
        return min(self.total, self.request.offset + len(self.items))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    def window(self, width: int = 2) -> list[int | None]:
        """Page numbers to link: the first, the last and ``width`` either side of this one;
        None where numbers are left out."""
        keep = {1, self.pages} | set(range(max(1, self.page - width), min(self.pages, self.page + width) + 1))
        out: list[int | None] = []
        for n in sorted(keep):
            if out and n - (out[-1] or 0) > 1:
                out.append(None)
            out.append(n)
        return out

    def map(self, fn) -> Page:
        """The same page with its items replaced by ``fn(items)`` (views of the rows)."""
        return Page(fn(self.items), self.total, self.request, self.sort, self.extra)


def sort_key(sort: str | None, allowed: dict[str, Any], default: str) -> str:
    """The sort a request asked for if the list allows it, else the default; an unknown column is
    a 400 that lists the allowed ones."""
    if not sort:
        return default
    if sort.lstrip("-") not in allowed:
        columns = ", ".join(sorted(allowed))  # the API's names of the columns, which a request gives as they are
        raise ValidationError(Msg(N_("sort must be one of: %(columns)s (with - in front to reverse)."), columns=columns),
                              {"sort": Msg(N_("one of %(columns)s"), columns=columns)})
    return sort


def ordered(stmt: Select, sort: str, allowed: dict[str, Any], tiebreak: Any) -> Select:
    """``stmt`` ordered by the named column (or columns), then by ``tiebreak`` so that pages
    never overlap."""
    cols = allowed[sort.lstrip("-")]
    cols = cols if isinstance(cols, (list, tuple)) else [cols]
    desc = sort.startswith("-")
    return stmt.order_by(*[c.desc() if desc else c.asc() for c in cols], tiebreak.desc() if desc else tiebreak.asc())


def paginate(db: Session, stmt: Select, req: PageRequest, scalars: bool = True, sort: str = "", key: Any = None,
             keys: Select | None = None) -> Page:
    """One page of ``stmt`` (already filtered and ordered) with the total of the whole list. With
    ``key`` (a column unique in the list), a page past the first takes its keys first, from the
    list's own filter and order with no other column, then its rows for those keys: the rows
    skipped to reach the page are never built (the joins that fetch what a page shows run for
    its rows only). ``key`` must name each row of the list once (no join that repeats it), and a
    list with ``key`` must not use DISTINCT or GROUP BY: its keys are taken with every other
    column left out, which would change what those select.

    ``keys``, given with ``key``: a select of the list's keys alone, in the list's order, from
    another table that holds exactly the list's rows (an index there in that order makes a page
    and the count cost the same however long the list). The total is its count and every page's
    keys are its slice; ``stmt`` then only orders and shapes the rows of those keys."""
    if keys is not None:
        total = db.execute(select(func.count()).select_from(keys.order_by(None).subquery())).scalar_one()
        result = db.execute(stmt.where(key.in_(keys.limit(req.per_page).offset(req.offset))))
        return Page(list(result.scalars() if scalars else result.all()), total, req, sort)
    total = db.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()
    if key is not None and req.offset:
        keys = stmt.with_only_columns(key).limit(req.per_page).offset(req.offset)
        result = db.execute(stmt.where(key.in_(keys)))
    else:
        result = db.execute(stmt.limit(req.per_page).offset(req.offset))
    items = list(result.scalars() if scalars else result.all())
    return Page(items, total, req, sort)
