from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class Site(Base):
    __tablename__ = "site"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(8), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # the languages the site works in, first the one it consents in by default (UI language codes)
    languages: Mapped[list | None] = mapped_column(JSON)
    target: Mapped[int] = mapped_column(Integer, default=0)
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    def as_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "country": self.country, "target": self.target,
                "timezone": self.timezone, "open": self.is_open, "languages": list(self.languages or [])}
