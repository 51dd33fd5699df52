"""The settings are declared once (trial.settings): README's configuration table lists exactly the
declared variables with their defaults and meanings, no other module reads a TRIAL_* variable,
`trial config show` never prints a secret, a value that cannot be used is a ConfigError naming its
variable, and production still refuses to start without its keys while development makes them up."""
from __future__ import annotations

import ast
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from trial import settings
from trial.config import ConfigError, audit_key, from_env, seal_key

ROOT = Path(__file__).resolve().parent.parent
_script = Path(sys.executable).parent / "trial"
TRIAL = [str(_script)] if _script.exists() else [sys.executable, "-m", "trial.cli"]
FERNET = "x1Dh9o2cD1M7XbOGAUXgwrj3E6o2Ei2R8z7SJjzK9zQ="  # 32 bytes, URL-safe base64


def readme_table() -> tuple[list[str], list[list[str]]]:
    """README's configuration table: the header's cells and each row's."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    assert len(rows) > 2 and set(rows[1]) == {"---"}, "README's configuration table is not where it was"
    return rows[0], rows[2:]


REGENERATE = "make the table again with `trial config show --markdown`"


def test_readme_lists_exactly_the_declared_variables_with_their_defaults_and_meanings():
    header, rows = readme_table()
    assert header == ["variable", "default", "meaning"]
    assert all(len(r) == 3 for r in rows), f"a row has not three cells: {REGENERATE}"
    in_readme = [r[0].strip("`") for r in rows]
    declared = list(settings.VARIABLES)
    assert set(in_readme) - set(declared) == set(), f"README names variables nobody reads: {REGENERATE}"
    assert set(declared) - set(in_readme) == set(), f"README lacks declared variables: {REGENERATE}"
    assert in_readme == declared, f"README's order is not the declaration's: {REGENERATE}"
    for (var, default, meaning), d in zip(rows, settings.describe(), strict=True):
        assert default == d.default, f"{var}: README says the default is {default!r}, the declaration {d.default!r}"
        assert meaning == d.meaning, f"{var}: README's meaning differs from the declaration's: {REGENERATE}"


def test_every_setting_has_a_type_a_default_and_a_meaning():
    for name, info in settings.Settings.model_fields.items():
        assert info.annotation is not None, name
        assert not info.is_required(), f"{name} has no default"
        assert info.description and len(info.description) > 10, f"{name} has no meaning"
        assert settings.default_text(info), name
    secret = {d.variable for d in settings.describe() if d.secret}
    assert secret == {"TRIAL_SECRET_KEY", "TRIAL_SEAL_KEY", "TRIAL_AUDIT_KEY", "TRIAL_AUDIT_KEYS_RETIRED",
                      "TRIAL_OIDC_CLIENT_SECRET", "TRIAL_METRICS_TOKEN"}


def test_no_module_but_the_declaration_reads_a_trial_variable():
    reads = re.compile(r"""(environ\s*(\.get\s*\(|\[)|getenv\s*\()\s*f?["']TRIAL_""")
    named = re.compile(r"\bTRIAL_[A-Z][A-Z_]*[A-Z]\b")
    sources = [*sorted((ROOT / "trial").rglob("*.py")), *sorted((ROOT / "config").glob("*.py"))]
    offenders, undeclared = [], set()
    for p in sources:
        text = p.read_text()
        if p != ROOT / "trial" / "settings.py":
            offenders += [f"{p.relative_to(ROOT)}: {m.group(0)}" for m in reads.finditer(text)]
        strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        undeclared |= {name for s in strings for name in named.findall(s)} - set(settings.VARIABLES)
    assert not offenders, f"TRIAL_* read outside trial/settings.py: {offenders}"
    assert not undeclared, f"TRIAL_* named in the code but not declared: {sorted(undeclared)}"


# --- read fresh, checked ---------------------------------------------------------------------------

def test_settings_are_read_again_when_the_environment_changes(monkeypatch):
    monkeypatch.setenv("TRIAL_PROXIES", "2")
    assert from_env()["PROXIES"] == 2 and settings.current().proxies == 2
    monkeypatch.setenv("TRIAL_PROXIES", "1")
    assert from_env()["PROXIES"] == 1
    monkeypatch.setenv("TRIAL_PROXIES", "")  # empty is as if not set
    monkeypatch.setenv("TRIAL_LOCK_BUILDER", "")
    assert settings.current().proxies == 0 and settings.current().lock_builder == "worker"
    monkeypatch.setenv("TRIAL_LOCK_BUILDER", "external")
    assert from_env()["LOCK_BUILDER"] == "external"
    assert settings.current() is settings.current()  # unchanged environment: the same object


@pytest.mark.parametrize("var, value, words", [
    ("TRIAL_PROXIES", "abc", "TRIAL_PROXIES must be a whole number"),
    ("TRIAL_PROXIES", "-1", "TRIAL_PROXIES must be a whole number of at least 0"),
    ("TRIAL_LOCK_BUILDER", "xyz", "TRIAL_LOCK_BUILDER must be worker, external or inline"),
    ("TRIAL_ENV", "prod", "TRIAL_ENV must be development or production"),
    ("TRIAL_WORKERS", "0", "TRIAL_WORKERS must be a whole number of at least 1"),
    ("TRIAL_SMTP_URL", "http://relay:25", "TRIAL_SMTP_URL must start with smtp:// or smtps://"),
    ("TRIAL_BASE_URL", "trial.example.org", "TRIAL_BASE_URL must start with http:// or https://"),
    ("TRIAL_DATABASE_URL", "my-database.sqlite", "TRIAL_DATABASE_URL must be a database URL"),
    ("TRIAL_AUDIT_KEY", "short-secret", "TRIAL_AUDIT_KEY must be at least 32 characters (a random secret)."),
    ("TRIAL_SEAL_KEY", "not-a-fernet-key-secret", "TRIAL_SEAL_KEY must be a Fernet key"),
    ("TRIAL_AUDIT_KEYS_RETIRED", "a-retired-key-of-at-least-32-characters,short-secret",
     "TRIAL_AUDIT_KEYS_RETIRED must be audit keys of at least 32 characters each"),
])
def test_a_bad_value_is_a_config_error_naming_the_variable(monkeypatch, var, value, words):
    from trial import create_app
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        create_app({"TESTING": True})
    if var in ("TRIAL_AUDIT_KEY", "TRIAL_AUDIT_KEYS_RETIRED", "TRIAL_SEAL_KEY", "TRIAL_DATABASE_URL", "TRIAL_SMTP_URL"):
        assert value not in str(e.value)  # a secret (or a URL, which may hold a password) is not repeated
    else:
        assert repr(value) in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(words)):
        settings.current()
    monkeypatch.delenv(var)
    assert settings.current()  # the environment put right: read again


def test_a_bad_lock_builder_override_is_refused_as_before():
    with pytest.raises(ConfigError, match=r"^TRIAL_LOCK_BUILDER must be worker, external or inline\.$"):
        from_env({"LOCK_BUILDER": "sometimes"})


def test_secrets_are_not_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("TRIAL_SECRET_KEY", "repr-secret-value")
    monkeypatch.setenv("TRIAL_DATABASE_URL", "postgresql+psycopg://trial:db-password@db/trial")
    text = repr(settings.current()) + str(settings.current())
    assert "repr-secret-value" not in text and "db-password" not in text


# --- production refuses, development makes up ------------------------------------------------------

def test_production_refuses_to_start_without_each_key(monkeypatch):
    monkeypatch.setenv("TRIAL_ENV", "production")
    monkeypatch.delenv("TRIAL_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^TRIAL_SECRET_KEY must be set in production \(TRIAL_ENV=production\); "
                                          r"refusing to start\.$"):
        from_env()
    monkeypatch.setenv("TRIAL_SECRET_KEY", "s" * 32)
    monkeypatch.delenv("TRIAL_SEAL_KEY")
    with pytest.raises(ConfigError, match=r"^TRIAL_SEAL_KEY must be set in production \(it seals the "
                                          r"randomization seed\)\.$"):
        from_env()
    with pytest.raises(ConfigError, match="TRIAL_SEAL_KEY must be set in production"):
        seal_key()
    monkeypatch.setenv("TRIAL_SEAL_KEY", FERNET)
    monkeypatch.delenv("TRIAL_AUDIT_KEY")
    with pytest.raises(ConfigError, match=r"^TRIAL_AUDIT_KEY must be set in production \(it keys the audit "
                                          r"trail's hash chain\)\.$"):
        from_env()
    with pytest.raises(ConfigError, match="TRIAL_AUDIT_KEY must be set in production"):
        audit_key()
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "a" * 32)
    cfg = from_env()
    assert cfg["ENV_NAME"] == "production" and cfg["SESSION_COOKIE_SECURE"] and cfg["SEAL_KEY"] == FERNET
    assert from_env({"SECRET_KEY": "from-the-override"})["SECRET_KEY"] == "from-the-override"


def test_development_keeps_random_keys_in_the_instance_folder(monkeypatch, tmp_path):
    inst = tmp_path / "inst"
    monkeypatch.setenv("TRIAL_INSTANCE_PATH", str(inst))
    for var in ("TRIAL_SECRET_KEY", "TRIAL_SEAL_KEY", "TRIAL_AUDIT_KEY", "TRIAL_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = from_env()
    assert cfg["ENV_NAME"] == "development" and not cfg["SESSION_COOKIE_SECURE"]
    assert cfg["DATABASE_URL"] == f"sqlite:///{inst / 'trial.db'}"
    assert cfg["PROXIES"] == 0 and cfg["LOCK_BUILDER"] == "worker"
    for name in ("secret_key", "seal_key", "audit_key"):
        assert (inst / name).stat().st_mode & 0o777 == 0o600, name
    again = from_env()
    assert again["SECRET_KEY"] == cfg["SECRET_KEY"] == (inst / "secret_key").read_text().strip()
    assert again["SEAL_KEY"] == cfg["SEAL_KEY"] == seal_key()
    assert audit_key() == (inst / "audit_key").read_text().strip().encode()


def test_gunicorn_takes_its_address_and_workers_from_the_settings(monkeypatch):
    conf = ROOT / "config" / "gunicorn.conf.py"
    default = runpy.run_path(str(conf))
    assert default["bind"] == "127.0.0.1:8000" and default["workers"] == 3 * (os.cpu_count() or 1)
    monkeypatch.setenv("TRIAL_BIND", "0.0.0.0:9000")
    monkeypatch.setenv("TRIAL_WORKERS", "5")
    conf_ = runpy.run_path(str(conf))
    assert conf_["bind"] == "0.0.0.0:9000" and conf_["workers"] == 5


# --- trial config show -----------------------------------------------------------------------------

def _show(tmp_path, *args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAL_")}
    full.update(TRIAL_INSTANCE_PATH=str(tmp_path), **env)
    return subprocess.run(TRIAL + ["config", "show", *args], env=full, capture_output=True, text=True, timeout=120,
                          check=False)


def test_config_show_lists_every_setting_and_never_a_secret(tmp_path):
    secrets_ = {"TRIAL_SECRET_KEY": "known-secret-key-value-0123456789", "TRIAL_SEAL_KEY": FERNET,
                "TRIAL_AUDIT_KEY": "known-audit-key-value-0123456789abcdef"}
    r = _show(tmp_path, TRIAL_ENV="production", TRIAL_PROXIES="2", TRIAL_MAIL_FROM="trial@example.org",
              TRIAL_DATABASE_URL="postgresql+psycopg://trial:db-pass-123@db.internal/trial",
              TRIAL_SMTP_URL="smtp://mailer:smtp-pass-456@relay:25", **secrets_)
    assert r.returncode == 0 and not r.stderr, r.stderr
    out = r.stdout
    for value in [*secrets_.values(), "db-pass-123", "smtp-pass-456"]:
        assert value not in out
    lines = {ln.split()[0]: ln.split(None, 1)[1] for ln in out.splitlines() if ln.startswith("TRIAL_")}
    assert list(lines) == list(settings.VARIABLES)
    assert all(lines[v] == "set (hidden)" for v in secrets_)
    assert lines["TRIAL_DATABASE_URL"] == "postgresql+psycopg://trial:***@db.internal/trial"
    assert lines["TRIAL_SMTP_URL"] == "smtp://mailer:***@relay:25"
    assert lines["TRIAL_ENV"] == "production" and lines["TRIAL_PROXIES"] == "2"
    assert lines["TRIAL_MAIL_FROM"] == "trial@example.org" and lines["TRIAL_BASE_URL"] == "not set"
    assert "default: 127.0.0.1:8000" in out and "default: trial-system@localhost" in out
    assert "number of reverse proxies in front of the app" in out  # the meaning


def test_config_show_says_which_value_cannot_be_used(tmp_path):
    r = _show(tmp_path, TRIAL_PROXIES="abc", TRIAL_SECRET_KEY="another-known-secret")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: TRIAL_PROXIES must be a whole number of at least 0, not 'abc'."
    assert re.search(r"^TRIAL_PROXIES +abc$", r.stdout, re.M) and "another-known-secret" not in r.stdout + r.stderr


def test_config_show_markdown_is_the_readme_table(tmp_path):
    r = _show(tmp_path, "--markdown", TRIAL_SECRET_KEY="markdown-secret")
    assert r.returncode == 0, r.stderr
    text = (ROOT / "README.md").read_text()
    assert r.stdout.strip() in text and "markdown-secret" not in r.stdout
