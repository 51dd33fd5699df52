"""A background process the app starts and lets go of: a lock's bundle worker, a data cut's or a
sharing bundle's builder, a site archive's job. It outlives the request or the command that starts
it (its own session: a signal to the app's process group does not reach it), reads the same
database (``TRIAL_DATABASE_URL``) and appends its output to ``worker.log`` in the instance folder.
No Flask here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def spawn_detached(args: list[str], url: str, instance: Path, env: dict[str, str] | None = None) -> None:
    """Start ``python args...`` detached, its output appended to ``instance``/worker.log. Raises
    OSError when it cannot be started (the instance folder not writable, no memory to fork): the
    caller records why on the job it was meant to build."""
    os.makedirs(instance, exist_ok=True)
    with open(os.path.join(instance, "worker.log"), "ab") as out:  # (the child keeps its own descriptor)
        subprocess.Popen([sys.executable, *args], env={**os.environ, "TRIAL_DATABASE_URL": url, **(env or {})},
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True)
