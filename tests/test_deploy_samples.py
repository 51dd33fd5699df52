"""The deployment samples (config/deploy/, README "Deploying") held to the code.

The app is started the way trial-web.service starts it: the unit's ExecStart command line, in its
WorkingDirectory, with its Environment= lines and the settings of trial.env.example (the keys made
by the commands the README gives, the paths moved into a temporary folder, a free port), on a
database migrated the way the README says (on PostgreSQL: the roles of create-database.sql, the
migrations as the owner, the app as the app's role). Then /readyz, and a login as a browser behind
nginx's TLS would make it (and, where nginx is installed, through nginx itself with the sample site).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import PG_URL, is_pg
from trial import settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "config" / "deploy"
BIN = Path(sys.executable).parent  # the venv's bin: /srv/trial/.venv/bin in the samples
# the folder whose .venv this is: /srv/trial in the samples (None: not a .venv)
APP_DIR = BIN.parent.parent if BIN.parent.name == ".venv" else None
UNITS = sorted(p.name for p in DEPLOY.glob("trial-*.service")) + sorted(p.name for p in DEPLOY.glob("*.timer"))
PASSWORD = "quiet-harbour-lantern-4187"
EMAIL = "it-admin@example.org"


# --- reading the samples -------------------------------------------------------------------------

def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> [(key, value)] in order (a key may repeat: ExecStart of a
    oneshot, EnvironmentFile)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = None
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], [])
            continue
        assert section is not None and "=" in line, f"{name}: {raw!r} is not KEY=value inside a section"
        key, value = line.split("=", 1)
        section.append((key.strip(), value.strip()))
    return out


def values(u: dict, section: str, key: str) -> list[str]:
    return [v for k, v in u.get(section, []) if k == key]


def one(u: dict, section: str, key: str) -> str:
    found = values(u, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def env_example() -> tuple[dict[str, str], set[str]]:
    """trial.env.example: the settings it sets, and the names it only mentions (`# TRIAL_X=...`)."""
    active, mentioned = {}, set()
    for line in (DEPLOY / "trial.env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?(TRIAL_[A-Z0-9_]+)=(.*)$", line)
        if m and m.group(1):
            mentioned.add(m.group(2))
        elif m:
            assert m.group(2) not in active, f"{m.group(2)} set twice"
            active[m.group(2)] = m.group(3)
        else:
            assert not line.strip() or line.startswith("#"), f"trial.env.example: {line!r} is not NAME=value"
    return active, mentioned


def nginx_site() -> str:
    return (DEPLOY / "nginx-trial.conf").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(path: str) -> str:
    """A path of the samples on this machine: the venv's bin, then the code folder."""
    return path.replace("/srv/trial/.venv/bin/", f"{BIN}/").replace("/srv/trial", str(ROOT))


def _trial_argv(line: str) -> list[str] | None:
    """The `trial` arguments of a command line that runs the venv's `trial`, else None."""
    argv = line.split()
    return argv[1:] if argv and argv[0] == "/srv/trial/.venv/bin/trial" else None


def _parses(args: list[str]) -> None:
    """The arguments name a real command of the CLI and its options parse (nothing is run)."""
    import click

    from trial.cli import main
    cmd, rest, path = main, list(args), ["trial"]
    while isinstance(cmd, click.Group):
        assert rest, f"{' '.join(path)}: a command is missing"
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"`{' '.join(path)} {rest[0]}` is not a command"
        path.append(rest.pop(0))
        cmd = sub
    cmd.make_context(" ".join(path), rest)


def made_keys() -> dict[str, str]:
    """The placeholders filled as README's step 5 fills them (the same recipes, in Python)."""
    return {"@SECRET_KEY@": os.urandom(32).hex(), "@AUDIT_KEY@": os.urandom(32).hex(),
            "@SEAL_KEY@": base64.urlsafe_b64encode(os.urandom(32)).decode(), "@METRICS_TOKEN@": os.urandom(32).hex()}


# --- the samples against each other and against the code -----------------------------------------

def test_every_unit_runs_a_real_command_as_the_service_user_with_the_settings():
    assert set(UNITS) >= {"trial-web.service", "trial-worker.service", "trial-checks.service", "trial-checks.timer",
                          "trial-mail.service", "trial-mail.timer", "trial-backup.service", "trial-backup.timer"}
    active, _ = env_example()
    for name in (n for n in UNITS if n.endswith(".service")):
        u = unit(name)
        s = "Service"
        assert values(u, s, "EnvironmentFile")[0] == "/etc/trial/trial.env", name
        assert one(u, s, "WorkingDirectory") == "/srv/trial", name
        assert one(u, s, "NoNewPrivileges") == "yes" and one(u, s, "ProtectSystem") == "strict", name
        assert one(u, s, "PrivateTmp") == "yes", name
        writable = one(u, s, "ReadWritePaths").split()
        commands = values(u, s, "ExecStart")
        assert commands, name
        for line in commands:
            args = _trial_argv(line)
            if args is not None:
                _parses(args)
        if name == "trial-backup.service":
            # the owner's role, as root: its password file is root's only
            assert not values(u, s, "User") and values(u, s, "EnvironmentFile") == ["/etc/trial/trial.env",
                                                                                    "/etc/trial/owner.env"]
            assert commands == ["/bin/sh /srv/trial/config/deploy/trial-backup.sh"]
            assert writable == ["/var/backups/trial"]
            continue
        assert one(u, s, "User") == "trial" and one(u, s, "Group") == "trial", name
        assert values(u, s, "EnvironmentFile") == ["/etc/trial/trial.env"], name  # never the owner's
        assert active["TRIAL_INSTANCE_PATH"] in writable, name
        if name != "trial-mail.service":  # the others may write the anchors and the journal
            for setting in ("TRIAL_AUDIT_ANCHORS", "TRIAL_ALLOCATION_JOURNAL"):
                assert "-" + str(Path(active[setting]).parent) in writable, (name, setting)
        assert one(u, "Install", "WantedBy") == "multi-user.target" if u.get("Install") else True
    web = unit("trial-web.service")
    assert values(web, "Service", "ExecStart") == ["/srv/trial/.venv/bin/gunicorn -c config/gunicorn.conf.py"]
    assert one(web, "Service", "KillMode") == "control-group" and one(web, "Service", "Restart") == "always"
    from trial.app import REFUSED  # the app refused to start (a schema or key to mend): no restart loop
    assert one(web, "Service", "RestartPreventExitStatus") == str(REFUSED)
    assert values(unit("trial-worker.service"), "Service", "ExecStart") == ["/srv/trial/.venv/bin/trial worker"]
    assert active["TRIAL_LOCK_BUILDER"] == "external"  # ... which is what trial-worker.service is for
    assert values(unit("trial-checks.service"), "Service", "ExecStart") == [
        "/srv/trial/.venv/bin/trial checks run", "/srv/trial/.venv/bin/trial audit anchor"]
    assert values(unit("trial-mail.service"), "Service", "ExecStart") == ["/srv/trial/.venv/bin/trial mail send"]
    for name in (n for n in UNITS if n.endswith(".service") and n != "trial-web.service"
                 and n != "trial-worker.service"):
        assert one(unit(name), "Service", "Type") == "oneshot", name
        timer = unit(name.replace(".service", ".timer"))  # each oneshot has its timer
        assert values(timer, "Timer", "OnCalendar") or values(timer, "Timer", "OnUnitActiveSec"), name
        assert one(timer, "Install", "WantedBy") == "timers.target"
    script = (DEPLOY / "trial-backup.sh").read_text()
    assert '"$APP_DIR/.venv/bin/trial" backup create --to "$dir"' in script
    assert '"$APP_DIR/.venv/bin/trial" backup verify "$dir"' in script
    _parses(["backup", "create", "--to", "/var/backups/trial/2027-03-01T013000Z"])
    _parses(["backup", "verify", "/var/backups/trial/2027-03-01T013000Z"])


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    for name in UNITS:  # with the paths of this checkout: it checks that each command exists
        (tmp_path / name).write_text(_local((DEPLOY / name).read_text()))
    run = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())], check=False,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    # ... and it does refuse a unit it cannot run
    (tmp_path / "trial-web.service").write_text(
        _local((DEPLOY / "trial-web.service").read_text()).replace("bin/gunicorn", "bin/no-such-gunicorn"))
    run = subprocess.run([analyze, "verify", str(tmp_path / "trial-web.service")], check=False, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "no-such-gunicorn" in run.stderr


def test_the_env_example_names_every_setting_and_sets_what_production_needs():
    active, mentioned = env_example()
    named = set(active) | mentioned
    assert named <= set(settings.VARIABLES), f"not settings: {sorted(named - set(settings.VARIABLES))}"
    assert set(settings.VARIABLES) <= named, f"settings the example does not mention: " \
                                             f"{sorted(set(settings.VARIABLES) - named)}"
    required = {"TRIAL_ENV", "TRIAL_DATABASE_URL", "TRIAL_SECRET_KEY", "TRIAL_SEAL_KEY", "TRIAL_AUDIT_KEY",
                "TRIAL_INSTANCE_PATH", "TRIAL_PROXIES", "TRIAL_BIND", "TRIAL_BASE_URL", "TRIAL_LOCK_BUILDER",
                "TRIAL_AUDIT_ANCHORS", "TRIAL_ALLOCATION_JOURNAL", "TRIAL_SMTP_URL", "TRIAL_METRICS_TOKEN"}
    assert required <= set(active), f"production needs: {sorted(required - set(active))}"
    assert active["TRIAL_ENV"] == "production" and int(active["TRIAL_PROXIES"]) >= 1
    assert urlsplit(active["TRIAL_BASE_URL"]).scheme == "https"
    assert urlsplit(active["TRIAL_DATABASE_URL"]).username == "trial_app"  # the app's role, never the owner
    # every key is a placeholder (nothing secret in git) filled by README's step 5
    readme = (ROOT / "README.md").read_text()
    for name in ("TRIAL_SECRET_KEY", "TRIAL_SEAL_KEY", "TRIAL_AUDIT_KEY", "TRIAL_METRICS_TOKEN"):
        assert re.fullmatch(r"@[A-Z_]+@", active[name]), name
    for placeholder in set(re.findall(r"@[A-Z_]+@", (DEPLOY / "trial.env.example").read_text())):
        assert f"s|{placeholder}|" in readme, f"README's step 5 does not fill {placeholder}"
    for placeholder in set(re.findall(r"@[A-Z_]+@", (DEPLOY / "owner.pgpass.example").read_text())):
        assert f"s|{placeholder}|" in readme, f"README's step 5 does not fill {placeholder}"
    # the keys made as the README makes them are what the settings accept
    env = {k: v for k, v in active.items()}
    for k, v in made_keys().items():
        env = {n: val.replace(k, v) for n, val in env.items()}
    env["TRIAL_DATABASE_URL"] = env["TRIAL_DATABASE_URL"].replace("@APP_PASSWORD@", os.urandom(24).hex())
    old = {k: os.environ.get(k) for k in settings.VARIABLES}
    try:
        for k in settings.VARIABLES:
            os.environ.pop(k, None)
        os.environ.update(env)
        s = settings.current()
        assert s.env == "production" and s.seal_key and s.audit_key and s.secret_key and s.proxies == 1
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # README installs every sample it names, and names every sample there is
    for f in DEPLOY.iterdir():
        assert f"`{f.name}`" in readme or f.name.replace(".service", "") in readme, f"README never names {f.name}"


def test_the_nginx_site_gives_the_app_what_it_trusts(app, monkeypatch):
    from werkzeug.middleware.proxy_fix import ProxyFix

    from trial import create_app
    conf = nginx_site()
    active, _ = env_example()
    # what the app trusts from one proxy with the example's TRIAL_PROXIES
    monkeypatch.setenv("TRIAL_PROXIES", active["TRIAL_PROXIES"])
    proxied = create_app({"ENGINE": app.extensions["trial.engine"], "SESSION_FACTORY": app.extensions["trial.sessions"],
                          "TESTING": True})
    assert isinstance(proxied.wsgi_app, ProxyFix)
    assert proxied.wsgi_app.x_for == proxied.wsgi_app.x_proto == int(active["TRIAL_PROXIES"])
    assert proxied.wsgi_app.x_host == 0  # so the Host header must be the browser's, port included
    server_level = conf.split("location / {")[0]
    for header in ("proxy_set_header Host $http_host;", "proxy_set_header X-Forwarded-Proto $scheme;",
                   "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                   "proxy_set_header X-Request-ID $request_id;"):
        assert header in server_level, header
    # a location with a proxy_set_header of its own would drop the inherited ones
    for block in re.findall(r"location [^{]+\{([^}]*)\}", conf):
        assert "proxy_set_header" not in block
        assert "proxy_pass http://trial_app;" in block
    assert f"server {active['TRIAL_BIND']} fail_timeout=0;" in conf  # upstream = where gunicorn listens
    assert re.search(r"listen 443 ssl", conf) and "ssl_certificate " in conf and "ssl_certificate_key " in conf
    plain = re.search(r"server \{\s*listen 80;(.*?)\}", conf, re.DOTALL).group(1)
    assert "return 301 https://$host$request_uri;" in plain and "proxy_pass" not in plain
    body = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1)) * 1024 * 1024
    assert body >= app.config["MAX_CONTENT_LENGTH"]  # the app answers a large body in its own words
    timeout = re.search(r"^timeout = (\d+)$", (ROOT / "config" / "gunicorn.conf.py").read_text(), re.MULTILINE).group(1)
    assert f"proxy_read_timeout {timeout}s;" in conf
    for probe in ("location = /healthz", "location = /readyz", "location = /metrics"):
        assert probe in conf
    metrics = re.search(r"location = /metrics \{([^}]*)\}", conf).group(1)
    assert "deny all;" in metrics and "allow 127.0.0.1;" in metrics
    # readiness says too much for the public (dead letters, paths, revisions): the loopback and the
    # load balancer only; liveness stays public
    ready = re.search(r"location = /readyz \{([^}]*)\}", conf).group(1)
    assert "deny all;" in ready and "allow 127.0.0.1;" in ready and "allow all" not in ready
    assert "deny" not in re.search(r"location = /healthz \{([^}]*)\}", conf).group(1)
    # the access log never records a full path or a query (study ids; pages that exist for some arms only)
    fmt = re.search(r"log_format trial_access (.*?);\n", conf, re.DOTALL).group(1)
    for whole in ("$request ", '$request"', "$request_uri", "$uri", "$args", "$query_string", "$http_referer",
                  "$arg_"):
        assert whole not in fmt, whole
    assert "$trial_logged_path" in fmt and re.search(r"^\s*access_log \S+ trial_access;", conf, re.MULTILINE)


# --- the app started as trial-web.service starts it -------------------------------------------

class Deployed:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.names: dict[str, str] = {}
        if PG_URL:
            tag = uuid.uuid4().hex[:8]
            self.names = {"db": f"trial_deploy_{tag}", "owner": f"trial_owner_{tag}", "app": f"trial_app_{tag}"}
            self.passwords = {"owner": os.urandom(12).hex(), "app": os.urandom(12).hex()}
            run_sql_sample(self.names, self.passwords)
            server = urlsplit(PG_URL).netloc.rsplit("@", 1)[-1]
            self.owner_url = (f"postgresql+psycopg://{self.names['owner']}:{self.passwords['owner']}@{server}/"
                              f"{self.names['db']}")
            self.app_url = f"postgresql+psycopg://{self.names['app']}:{self.passwords['app']}@{server}/{self.names['db']}"
        else:
            self.owner_url = self.app_url = f"sqlite:///{root / 'trial.db'}"
        active, _ = env_example()
        keys = made_keys()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAL_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        for name, value in active.items():
            for k, v in keys.items():
                value = value.replace(k, v)
            env[name] = value
        for folder in ("instance", "anchors", "journal", "run"):
            (root / folder).mkdir(mode=0o700)
        env.update(TRIAL_DATABASE_URL=self.app_url, TRIAL_INSTANCE_PATH=str(root / "instance"),
                   TRIAL_AUDIT_ANCHORS=str(root / "anchors" / Path(active["TRIAL_AUDIT_ANCHORS"]).name),
                   TRIAL_ALLOCATION_JOURNAL=str(root / "journal" / Path(active["TRIAL_ALLOCATION_JOURNAL"]).name),
                   TRIAL_BIND=f"127.0.0.1:{self.port}",
                   # the example's relay is not on this machine: a local port nothing listens on
                   TRIAL_SMTP_URL=f"smtp://127.0.0.1:{_free_port()}")
        web = unit("trial-web.service")
        for assignment in values(web, "Service", "Environment"):
            k, v = assignment.split("=", 1)
            env[k] = str(root / "run") if v.startswith("/run/") else v
        self.env = env
        self.token = keys["@METRICS_TOKEN@"]
        self.argv = [_local(a) for a in one(web, "Service", "ExecStart").split()]
        self.cwd = _local(one(web, "Service", "WorkingDirectory"))
        self.proc = None

    def trial(self, *args: str, owner: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, TRIAL_DATABASE_URL=self.owner_url if owner else self.app_url)
        return subprocess.run([str(BIN / "trial"), *args], check=False, env=env, cwd=self.cwd, input=stdin, capture_output=True,
                              text=True, timeout=300)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gunicorn exited: {self.proc.stderr.read()[-3000:]}"
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("gunicorn did not come up")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        os.killpg(self.proc.pid, signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return err

    def drop(self) -> None:
        if self.names:
            drop_sql_sample(self.names)


def _psql_url(database: str = "postgres") -> str:
    parts = urlsplit(PG_URL.replace("postgresql+psycopg://", "postgresql://"))
    return parts._replace(path="/" + database).geturl()


def run_sql_sample(names: dict[str, str], passwords: dict[str, str] | None) -> subprocess.CompletedProcess:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed (Debian: postgresql-client)")
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"db={names['db']}", "-v", f"owner={names['owner']}",
            "-v", f"app={names['app']}"]
    if passwords:
        args += ["-v", f"owner_password={passwords['owner']}", "-v", f"app_password={passwords['app']}"]
    run = subprocess.run([*args, "-f", str(DEPLOY / "create-database.sql"), _psql_url()], check=False,
                         capture_output=True,
                         text=True, timeout=60)
    if passwords:
        assert run.returncode == 0, run.stderr
    return run


def drop_sql_sample(names: dict[str, str]) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)'))
        for role in (names["app"], names["owner"]):
            c.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture(scope="module")
def deployed():
    root = Path(tempfile.mkdtemp(prefix="trial-deploy-"))
    d = Deployed(root)
    try:
        up = d.trial("db", "upgrade", owner=True)  # README: `trial-owner db upgrade`
        assert up.returncode == 0, up.stderr
        made = d.trial("user", "create", "--email", EMAIL, "--name", "IT Admin", "--role", "admin",
                       "--password-stdin", stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        d.start()
        yield d
    finally:
        d.log = d.stop()
        d.drop()
        shutil.rmtree(root, ignore_errors=True)


PROXY = {"X-Forwarded-For": "198.51.100.7", "X-Request-ID": "0123456789abcdef0123456789abcdef"}


def test_the_app_started_as_the_unit_starts_it_is_ready(deployed):
    r = requests.get(deployed.base + "/readyz", headers={**PROXY, "X-Forwarded-Proto": "https",
                                                         "Host": "trial.example.org"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and set(body["checks"]) >= {"database", "migrations", "keys", "worker", "mail"}
    assert all(v == "ok" for v in body["checks"].values()), body
    assert r.headers["X-Request-ID"] == PROXY["X-Request-ID"]  # nginx's $request_id is the app's request id
    assert requests.get(deployed.base + "/healthz", timeout=10).json() == {"status": "ok"}
    # /metrics: the example's token, nothing else
    assert requests.get(deployed.base + "/metrics", timeout=10).status_code == 404
    m = requests.get(deployed.base + "/metrics", headers={"Authorization": f"Bearer {deployed.token}"}, timeout=10)
    assert m.status_code == 200 and "trial_http_requests_total" in m.text


class Browser:
    """What a browser does that matters here: keeps cookies (a Secure one goes back only over
    TLS), follows the page's Referrer-Policy when it posts a form, and talks to the app through a
    proxy that says which scheme it spoke with the browser (X-Forwarded-Proto)."""

    def __init__(self, base: str, host: str, scheme: str):
        self.base, self.host, self.scheme = base, host, scheme
        self.cookies: dict[str, tuple[str, bool]] = {}
        self.policy = None
        self.page = None

    def _headers(self, extra=None) -> dict:
        h = {**PROXY, "X-Forwarded-Proto": self.scheme, "Host": self.host}
        sent = [f"{k}={v}" for k, (v, secure) in self.cookies.items() if self.scheme == "https" or not secure]
        if sent:
            h["Cookie"] = "; ".join(sent)
        return {**h, **(extra or {})}

    def _keep(self, r) -> None:
        for c in r.raw.headers.getlist("Set-Cookie"):
            name, value = c.split(";", 1)[0].split("=", 1)
            self.cookies[name] = (value, "secure" in c.lower())

    def get(self, path: str):
        r = requests.get(self.base + path, headers=self._headers(), allow_redirects=False, timeout=10)
        self._keep(r)
        self.policy, self.page = r.headers.get("Referrer-Policy"), path
        return r

    def post(self, path: str, data: dict):
        referer = {}
        if self.policy in ("same-origin", "strict-origin-when-cross-origin", "no-referrer-when-downgrade"):
            referer = {"Referer": f"{self.scheme}://{self.host}{self.page}"}
        elif self.policy in ("origin", "strict-origin", "origin-when-cross-origin"):
            referer = {"Referer": f"{self.scheme}://{self.host}/"}
        r = requests.post(self.base + path, data=data, headers=self._headers(referer), allow_redirects=False,
                          timeout=10)
        self._keep(r)
        return r


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def test_a_browser_behind_the_tls_proxy_logs_in_and_reaches_the_home_page(deployed):
    b = Browser(deployed.base, "trial.example.org", "https")
    page = b.get("/login")
    assert page.status_code == 200
    r = b.post("/login", {"csrf_token": _csrf(page.text), "email": EMAIL, "password": PASSWORD})
    # production asks every role for a second factor: the first login goes to its enrolment
    assert r.status_code == 302 and r.headers["Location"].endswith("/account/mfa"), (r.status_code, r.text[:500])
    enrol = b.get("/account/mfa")
    assert enrol.status_code == 200
    secret = re.search(r'id="totp-secret" class="secret">([A-Z2-7 ]+)<', enrol.text).group(1).replace(" ", "")
    done = b.post("/account/mfa", {"csrf_token": _csrf(enrol.text), "code": pyotp.TOTP(secret).now()})
    assert done.status_code == 200, done.text[:500]
    home = b.get("/")
    assert home.status_code == 200 and "IT Admin" in home.text


def test_over_plain_http_the_login_fails_which_is_why_nginx_redirects(deployed):
    b = Browser(deployed.base, "trial.example.org", "http")
    page = b.get("/login")
    assert all(secure for _, secure in b.cookies.values())  # production: the session cookie is Secure ...
    r = b.post("/login", {"csrf_token": _csrf(page.text), "email": EMAIL, "password": PASSWORD})
    assert r.status_code == 400 and "The form expired" in r.text  # ... so it never comes back over HTTP


def _get_from(source: str, host: str, port: int, path: str, cafile: str) -> int:
    """The status of a GET over TLS sent from the local address ``source`` (any 127.x.y.z is the
    loopback on Linux: a client that is not 127.0.0.1 to nginx)."""
    import http.client
    import ssl
    conn = http.client.HTTPSConnection(host, port, timeout=10, source_address=(source, 0),
                                       context=ssl.create_default_context(cafile=cafile))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_nginx_sample_serves_the_app_over_tls(deployed, tmp_path):
    nginx, openssl = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None), \
        shutil.which("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx or openssl is not installed (Debian: apt-get install nginx openssl)")
    work = Path(tempfile.mkdtemp(prefix="trial-nginx-"))  # readable by nginx's worker user
    try:
        tls, plain = _free_port(), _free_port()
        host = "localhost"
        # the README's self-signed certificate, for this host
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "1", "-nodes",
                        "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}", "-keyout",
                        str(work / "trial.key"), "-out", str(work / "trial.crt")], check=True, capture_output=True)
        site = (nginx_site().replace("trial.example.org", host)
                .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{tls} ssl;")
                .replace("listen 80;", f"listen 127.0.0.1:{plain};")
                .replace("/etc/ssl/certs/trial.crt", str(work / "trial.crt"))
                .replace("/etc/ssl/private/trial.key", str(work / "trial.key"))
                .replace("/var/log/nginx/", f"{work}/")
                .replace("server 127.0.0.1:8000", f"server 127.0.0.1:{deployed.port}"))
        site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)
        (work / "site.conf").write_text(site)
        temps = " ".join(f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (work / "nginx.conf").write_text(
            ("user root root;\n" if os.geteuid() == 0 else "") +  # (its temporary folders are under /tmp/...)
            f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
            f"events {{ worker_connections 64; }}\n"
            f"http {{ access_log off; {temps} include {work}/site.conf; }}\n")
        test = subprocess.run([nginx, "-t", "-p", str(work), "-c", str(work / "nginx.conf")], check=False,
                              capture_output=True, text=True)
        assert test.returncode == 0, test.stderr
        proc = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            base = f"https://{host}:{tls}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    r = requests.get(base + "/readyz", verify=str(work / "trial.crt"), timeout=5)
                    break
                except requests.ConnectionError:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                    time.sleep(0.2)
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])  # nginx's $request_id, taken by the app
            # plain HTTP: only the redirect
            r = requests.get(f"http://{host}:{plain}/login", allow_redirects=False, timeout=5)
            assert r.status_code == 301 and r.headers["Location"] == f"https://{host}/login"
            # a login over TLS with a real cookie jar (the Secure cookie comes back over https)
            s = requests.Session()
            cert = str(work / "trial.crt")  # per request: a session's own verify yields to REQUESTS_CA_BUNDLE
            page = s.get(base + "/login", verify=cert, timeout=10)
            assert page.headers["Referrer-Policy"] == "same-origin"
            logged = f"id={page.headers['X-Request-ID']}"  # one id in nginx's log and the app's
            deadline = time.monotonic() + 5  # (nginx writes the line once the answer has gone)
            while logged not in (work / "trial.access.log").read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert logged in (work / "trial.access.log").read_text()
            r = s.post(base + "/login", data={"csrf_token": _csrf(page.text), "email": EMAIL, "password": PASSWORD},
                       headers={"Referer": base + "/login"}, allow_redirects=False, verify=cert, timeout=10)
            assert r.status_code == 302 and r.headers["Location"] in ("/login/code", "/account/mfa"), r.text[:300]
            # /metrics from the loopback passes nginx; the app still wants the token
            # (as the scraper asks: no cookie)
            assert requests.get(base + "/metrics", verify=cert, allow_redirects=False, timeout=10).status_code == 404
            scraped = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {deployed.token}"},
                                   verify=cert, allow_redirects=False, timeout=10)
            assert scraped.status_code == 200 and "trial_http_requests_total" in scraped.text
            too_big = s.post(base + "/login", data={"x": "y" * (5 * 1024 * 1024)}, verify=cert, timeout=20)
            assert too_big.status_code == 413
            # a child's page, with a query: the access log keeps only the path's first segment
            seen = s.get(base + "/participants/AT01-0042/sessions/new?study_id=AT01-0043", verify=cert,
                         allow_redirects=False, timeout=10)
            logged = f"id={seen.headers['X-Request-ID']}"
            deadline = time.monotonic() + 5
            while logged not in (work / "trial.access.log").read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            [line] = [x for x in (work / "trial.access.log").read_text().splitlines() if logged in x]
            assert '"GET /participants/... HTTP/1.1"' in line, line
            access = (work / "trial.access.log").read_text()
            assert "AT01-004" not in access and "sessions" not in access and "study_id" not in access
            assert '"GET /login HTTP/1.1"' in access  # a one-segment path is logged as it is
            # /readyz only from the allowed addresses (the loopback here); /healthz from anywhere
            assert _get_from("127.0.0.2", host, tls, "/readyz", cert) == 403
            assert _get_from("127.0.0.2", host, tls, "/healthz", cert) == 200
            assert _get_from("127.0.0.1", host, tls, "/readyz", cert) == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the SQL sample's least privilege (PostgreSQL) -------------------------------------------

@pytest.mark.skipif(not is_pg(), reason="the roles and privileges are PostgreSQL's")
def test_the_sql_sample_makes_an_app_role_that_cannot_touch_the_schema_or_the_trail(deployed):
    # the app's role wrote through the app (the fixture's user, the site below) ...
    site = deployed.trial("site", "create", "--code", "AT01", "--name", "Vienna")
    assert site.returncode == 0, site.stderr
    assert deployed.trial("audit", "verify").returncode == 0
    app = create_engine(deployed.app_url)
    refused = {
        "DROP TRIGGER audit_record_no_update_delete ON audit_record": "must be owner",
        "ALTER TABLE audit_record DISABLE TRIGGER ALL": "must be owner",
        "ALTER TABLE participant ADD COLUMN x integer": "must be owner",
        "DROP TABLE audit_seal": "must be owner",
        "DELETE FROM audit_record": "append-only",
        "UPDATE audit_record SET actor = 'x'": "append-only",
        "TRUNCATE audit_record": "permission denied",
        "SET session_replication_role = replica": "permission denied",
        "CREATE TABLE t (id integer)": "permission denied",
        "CREATE TEMP TABLE t (id integer)": "permission denied",
        "CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql": "permission denied",
    }
    try:
        with app.connect() as c:
            before = c.execute(text("SELECT count(*) FROM audit_record")).scalar_one()
            c.rollback()
        for sql, why in refused.items():
            with app.connect() as c, pytest.raises(DBAPIError) as e:
                c.execute(text(sql))
            assert why in str(e.value.orig), (sql, str(e.value.orig))
        with app.connect() as c:
            assert c.execute(text("SELECT count(*) FROM audit_record")).scalar_one() == before
            c.execute(text("LISTEN trial_lock_build"))  # what the worker does: no privilege needed
            c.execute(text("NOTIFY trial_lock_build"))
            c.commit()
        # a later migration's table (created by the owner) is the app's to write without a grant of its own
        owner = create_engine(deployed.owner_url, isolation_level="AUTOCOMMIT")
        with owner.connect() as c:
            c.execute(text("CREATE TABLE deploy_future (id serial PRIMARY KEY, v text)"))
        owner.dispose()
        with app.connect() as c:
            c.execute(text("INSERT INTO deploy_future (v) VALUES ('x')"))
            c.commit()
        assert deployed.trial("audit", "verify").returncode == 0
    finally:
        app.dispose()


@pytest.mark.skipif(not is_pg(), reason="PostgreSQL's psql")
def test_the_sql_sample_without_passwords_creates_nothing():
    tag = uuid.uuid4().hex[:8]
    names = {"db": f"trial_deploy_{tag}", "owner": f"trial_owner_{tag}", "app": f"trial_app_{tag}"}
    try:
        run = run_sql_sample(names, None)
        assert run.returncode != 0 and "owner_password" in run.stdout + run.stderr
        admin = create_engine(PG_URL)
        with admin.connect() as c:
            assert c.execute(text("SELECT count(*) FROM pg_roles WHERE rolname IN (:o, :a)"),
                             {"o": names["owner"], "a": names["app"]}).scalar_one() == 0
            assert c.execute(text("SELECT count(*) FROM pg_database WHERE datname = :d"),
                             {"d": names["db"]}).scalar_one() == 0
        admin.dispose()
    finally:
        drop_sql_sample(names)


# --- the command line wrapper and the backup script, as root runs them -------------------------

def _adapted(name: str, root: Path, **paths: str) -> Path:
    """A copy of a script of config/deploy with its paths moved (what an operator adapts)."""
    text_ = (DEPLOY / name).read_text()
    for var, value in paths.items():
        text_, n = re.subn(rf"^{var}=\S+", f"{var}={value}", text_, flags=re.MULTILINE)
        assert n == 1, var
    out = root / name
    out.write_text(text_)
    out.chmod(0o755)
    return out


def _wrapper(tmp_path: Path, trial_env: str) -> tuple[Path, Path, dict]:
    """The wrapper installed as `trial` and as `trial-owner` in ``tmp_path``, with ``trial_env`` as
    /etc/trial/trial.env and the sample owner.env; the environment to run them in (no TRIAL_*)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "trial.env").write_text(trial_env)
    (etc / "owner.env").write_text((DEPLOY / "owner.env.example").read_text())
    if APP_DIR is None:
        pytest.skip("the venv is not a .venv folder: the wrapper's $APP_DIR/.venv/bin/trial does not exist")
    script = _adapted("trial-cli", tmp_path, APP_DIR=str(APP_DIR), ETC_DIR=str(etc), SERVICE_USER="root")
    owner = tmp_path / "trial-owner"
    owner.symlink_to(script.name)
    return script, owner, {k: v for k, v in os.environ.items() if not k.startswith("TRIAL_")}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="runs as root, like the operator")
def test_the_cli_wrapper_gives_the_app_its_settings_and_the_owner_its_own(tmp_path):
    script, owner, env = _wrapper(tmp_path, "TRIAL_ENV=production\nTRIAL_DATABASE_URL=postgresql+psycopg://trial_app:"
                                            "s3cret@127.0.0.1:5432/trial?sslmode=prefer\nTRIAL_PROXIES=1\n")

    def shown(cmd: Path, *args: str) -> str:
        run = subprocess.run([str(cmd), *args, "config", "show"], check=False, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return re.search(r"^TRIAL_DATABASE_URL\s+(\S+)", run.stdout, re.MULTILINE).group(1)

    assert shown(script) == "postgresql+psycopg://trial_app:***@127.0.0.1:5432/trial?sslmode=prefer"
    assert shown(owner) == "postgresql+psycopg://trial_owner@127.0.0.1:5432/trial"
    assert shown(owner, "--database", "trial_drill") == "postgresql+psycopg://trial_owner@127.0.0.1:5432/trial_drill"
    assert shown(script, "--database", "x") == "postgresql+psycopg://trial_app:***@127.0.0.1:5432/x?sslmode=prefer"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="runs as root, like the operator")
def test_a_drill_on_a_copy_never_gets_productions_journal_or_anchor_file(tmp_path):
    script, owner, env = _wrapper(tmp_path, "TRIAL_ENV=production\nTRIAL_DATABASE_URL=postgresql+psycopg://trial_app:"
                                            "s3cret@127.0.0.1:5432/trial\nTRIAL_ALLOCATION_JOURNAL=/srv/journal/"
                                            "allocations.jsonl\nTRIAL_AUDIT_ANCHORS=/srv/anchors/audit-anchors.jsonl\n")

    def settings_of(cmd: Path, *args: str) -> dict[str, str]:
        run = subprocess.run([str(cmd), *args, "config", "show"], check=False, env=env, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return {k: re.search(rf"^{k}\s+(.+)$", run.stdout, re.MULTILINE).group(1).strip()
                for k in ("TRIAL_DATABASE_URL", "TRIAL_ALLOCATION_JOURNAL", "TRIAL_AUDIT_ANCHORS")}

    for cmd in (script, owner):  # production: both files, as trial.env says
        got = settings_of(cmd)
        assert got["TRIAL_ALLOCATION_JOURNAL"] == "/srv/journal/allocations.jsonl"
        assert got["TRIAL_AUDIT_ANCHORS"] == "/srv/anchors/audit-anchors.jsonl"
        drill = settings_of(cmd, "--database", "trial_drill")  # a copy: neither
        assert drill["TRIAL_DATABASE_URL"].endswith("/trial_drill")
        assert drill["TRIAL_ALLOCATION_JOURNAL"] == "not set" and drill["TRIAL_AUDIT_ANCHORS"] == "not set"


def test_the_backup_script_makes_a_backup_that_verifies(deployed, tmp_path):
    if is_pg() and shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed (Debian: postgresql-client)")
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    if APP_DIR is None:
        pytest.skip("the venv is not a .venv folder: the script's $APP_DIR/.venv/bin/trial does not exist")
    script = _adapted("trial-backup.sh", tmp_path, APP_DIR=str(APP_DIR), BACKUPS=str(backups))
    env = dict(deployed.env, TRIAL_DATABASE_URL=deployed.owner_url)  # trial.env, then owner.env
    run = subprocess.run(["/bin/sh", str(script)], check=False, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    made = list(backups.iterdir())
    assert len(made) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d{6}Z", made[0].name)
    assert "verified" in run.stdout and (made[0] / "manifest.json").exists()
