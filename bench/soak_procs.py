"""The soak's processes: the Procfile's commands, each run twice, each in its own process
group (so a SIGKILL takes a prefork worker's pool down with it, as a lost machine would) and
each logging to bench/logs/soak/<broker>/<name>.<n>.log."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
# web takes the API; flower is a dashboard, nothing depends on it.
SOAK_PROCESSES = ("web", "worker", "sender_email", "sender_sms", "beat")


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    commands: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_]+):\s*(.+)$", line.strip())
        if match and not line.lstrip().startswith("#"):
            commands[match.group(1)] = match.group(2)
    return commands


def instance_command(name: str, n: int, command: str) -> str:
    """The Procfile's command; a celery worker gets a nodename of its own (`name.n@host`), or
    the two copies would share one and their logs, pings and pidbox could not tell them apart
    (the option given last wins, so this overrides a --hostname of the Procfile's)."""
    if re.search(r"\bcelery\b.*\bworker\b", command):
        return f"{command} --hostname {name}.{n}@%h"
    return command


@dataclass
class Proc:
    name: str  # e.g. "sender_sms.2"
    command: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    kills: int = 0
    crashes: list[str] = field(default_factory=list)  # exits nobody asked for
    pid_file: Path | None = None  # every group started, for scripts/soak.sh to stop if this process dies

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"\n--- soak: start #{self.starts} at {time.strftime('%H:%M:%S')}: {self.command}\n")
            log.flush()
            # bash expands the Procfile's ${VAR:-default}s, then exec: the group leader is the process.
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {self.command}"], cwd=ROOT, env=self.env, start_new_session=True,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if self.pid_file is not None:
            with open(self.pid_file, "a") as pids:
                pids.write(f"{self.process.pid}\n")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the whole group: no warm shutdown, no acks, tasks in hand are lost."""
        self.kills += 1
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            self.signal_group(signal.SIGKILL)  # pool children of a dead leader, if any
            return
        self.signal_group(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(5)
        self.signal_group(signal.SIGKILL)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Fleet:
    """Every soak process, twice; `web.n` listens on base_port + n - 1."""

    def __init__(self, env: dict[str, str], log_dir: Path, base_port: int, copies: int = 2) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "pids").write_text("")
        commands = procfile_commands()
        self.procs: dict[str, Proc] = {}
        self.web_ports: list[int] = []
        for name in SOAK_PROCESSES:
            for n in range(1, copies + 1):
                own_env = dict(env)
                if name == "web":
                    port = base_port + n - 1
                    own_env.update(PORT=str(port), WEB_BIND="127.0.0.1")
                    self.web_ports.append(port)
                key = f"{name}.{n}"
                log_path = log_dir / f"{key}.log"
                log_path.write_text("")
                self.procs[key] = Proc(key, instance_command(name, n, commands[name]), own_env, log_path,
                                       pid_file=log_dir / "pids")

    def start_all(self) -> None:
        for proc in self.procs.values():
            proc.start()

    def killable(self) -> list[str]:
        return [key for key in self.procs if key.split(".")[0] in ("worker", "sender_email", "sender_sms")]

    def wait_workers_ready(self, timeout: float) -> None:
        """Celery prints 'ready.' once a worker consumes; web answers once gunicorn listens."""
        deadline = time.monotonic() + timeout
        waiting = [p for k, p in self.procs.items() if k in self.killable()]
        while waiting and time.monotonic() < deadline:
            for proc in list(waiting):
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited at start; see {proc.log_path}:\n{proc.log_tail()}")
                if " ready." in proc.log_path.read_text(errors="replace"):
                    waiting.remove(proc)
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"not ready after {timeout}s: {[p.name for p in waiting]}")

    def revive_crashed(self, paused: set[str]) -> list[str]:
        """A process that exited on its own (not one the chaos loop holds down) is noted and
        started again, as a supervisor would."""
        revived = []
        for key, proc in self.procs.items():
            if key not in paused and not proc.alive():
                code = proc.process.returncode if proc.process else None
                proc.crashes.append(f"exit {code} at {time.strftime('%H:%M:%S')}")
                proc.start()
                revived.append(key)
        return revived

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.signal_group(signal.SIGTERM)
        for proc in self.procs.values():
            proc.stop(timeout=15)

    def summary(self) -> dict[str, dict[str, object]]:
        return {k: {"starts": p.starts, "sigkills": p.kills, "crashes": p.crashes, "command": p.command}
                for k, p in self.procs.items()}
