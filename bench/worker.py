"""The real worker as a subprocess, its memory read from /proc, and a beat-equivalent ticker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = Path(__file__).resolve().parent / "logs"

# The Procfile's worker line, with the bench app (project app + bench.noop) and prefork
# named explicitly; concurrency 2 because this machine has 2 cores.
WORKER_ARGS = ["worker", "--queues", "control,steps,email,sms,messages", "--pool", "prefork", "--concurrency", "2",
               "--loglevel", "WARNING"]
# The Procfile's sender_email line (prefork, DRIP_EMAIL_SENDERS processes by default).
SENDER_ARGS = ["worker", "--queues", "email,messages", "--pool", "prefork", "--concurrency", "4",
               "--hostname", "sender@%h", "--loglevel", "WARNING"]


class Worker:
    def __init__(self, name: str, env: dict[str, str], args: list[str] = WORKER_ARGS, command: list[str] | None = None) -> None:
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "celery", "-A", "bench.celery_bench", *args],
            cwd=ROOT, env=env, start_new_session=True, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, app, timeout: float = 60, hostname: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.log_path}")
            if app.control.ping(timeout=0.5, destination=[hostname] if hostname else None):
                return
        raise RuntimeError(f"worker did not answer a ping within {timeout}s; see {self.log_path}")

    def pool_pids(self) -> list[int]:
        return [pid for pid in _all_pids() if _ppid(pid) == self.pid]

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM to the worker's own process group), SIGKILL if it hangs."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)
        self._log.close()


def web(env: dict[str, str], port: int) -> Worker:
    """The Procfile's `web` line as it is (gunicorn, 2 sync workers, access log), on `port`."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = [gunicorn, "drip.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--access-logfile", "-"]
    return Worker("web", env, command=command)


def wait_http(url: str, timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered at {url} within {timeout}s")


@dataclass
class Memory:
    rss_kb: int  # sum of VmRSS over the main process and its pool children
    pss_kb: int  # sum of Pss: pages shared after fork counted once, split between sharers
    per_process: dict[int, int]  # pid -> VmRSS kB

    def as_dict(self) -> dict:
        return {"rss_kb": self.rss_kb, "pss_kb": self.pss_kb, "rss_kb_per_process": {str(k): v for k, v in self.per_process.items()}}


def memory(worker: Worker) -> Memory:
    pids = [worker.pid, *worker.pool_pids()]
    per = {pid: _status_kb(pid, "VmRSS") for pid in pids}
    return Memory(sum(per.values()), sum(_pss_kb(pid) for pid in pids), per)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces or parentheses: split after the last ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Ticker:
    """What `celery beat` does with the project's schedule: sends each entry of
    app.conf.beat_schedule (with its options, e.g. expires) through the broker on its
    interval. A thread here instead of a beat process: one less process on 2 cores, and
    it can be paused while something else is timed."""

    def __init__(self, app, overrides: dict[str, float] | None = None) -> None:
        self.app = app
        self.entries = []
        for name, entry in app.conf.beat_schedule.items():
            every = float((overrides or {}).get(name, entry["schedule"]))
            options = dict(entry.get("options", {}))
            # django-celery-beat's DatabaseScheduler sends expire_seconds as `expires`.
            if "expire_seconds" in options:
                options["expires"] = options.pop("expire_seconds")
            self.entries.append((entry["task"], every, options))
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-ticker", daemon=True)
        self.sent = 0

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        next_at = {task: time.monotonic() for task, _, _ in self.entries}
        while not self._stop.wait(0.05):
            if self._paused.is_set():
                continue
            now = time.monotonic()
            for task, every, options in self.entries:
                if now >= next_at[task]:
                    self.app.send_task(task, **options)
                    self.sent += 1
                    next_at[task] = now + every


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (the pool processes live as long as the worker)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


class CpuMeter:
    """Where the CPU went during a measurement: the worker, this process (the bench, its
    stub and ticker), and the rest of the machine (PostgreSQL backends, Redis, anything
    else running)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.pids = [worker.pid, *worker.pool_pids()]
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        busy, total = machine_cpu_seconds()
        own = os.times()
        return busy, total, process_cpu_seconds(self.pids), own.user + own.system

    def mark_window(self) -> None:
        """Start of the window over which the machine's busy share is reported (the CPU
        totals still count from construction)."""
        self.window = machine_cpu_seconds()

    def stop(self, units: int) -> dict:
        end = self._read()
        busy, total, worker, bench = (b - a for a, b in zip(self.start, end, strict=True))
        rest = max(0.0, busy - worker - bench)
        per = 1000 / units if units else 0
        w_busy, w_total = (b - a for a, b in zip(getattr(self, "window", self.start[:2]), end[:2], strict=True))
        return {
            "machine_busy_percent": round(100 * w_busy / w_total, 1) if w_total else None,
            "worker_cpu_s": round(worker, 2), "bench_process_cpu_s": round(bench, 2), "rest_cpu_s": round(rest, 2),
            "worker_cpu_ms_per_message": round(worker * per, 2), "rest_cpu_ms_per_message": round(rest * per, 2),
        }
