"""Child processes of the board (a training run, an evaluation, a teacher run): started in their own
process group with the output in a log file, stopped cleanly (SIGINT, then SIGTERM, then SIGKILL),
and recorded in a state file so a reopened page, or a restarted board, finds a run still going."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .launch_options import REPO

STOP_GRACE_S = 20.0  # after SIGINT, how long a run may take to end before SIGTERM (and as long again: SIGKILL)


@dataclass
class RunState:
    """What the board knows about one child process (also its JSON state file)."""
    kind: str
    command: List[str]
    log: str
    cwd: str
    pid: int = 0
    started: float = 0.0
    ended: Optional[float] = None
    returncode: Optional[int] = None
    stop_requested: bool = False
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.ended is None

    @property
    def status(self) -> str:
        if self.ended is None:
            return "stopping" if self.stop_requested else "running"
        if self.stop_requested:
            return "stopped"
        if self.returncode == 0:
            return "finished"
        return "failed" if self.returncode is not None else "ended"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits to be reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Runner:
    """One child process at a time of one kind; `current()` re-attaches to it, even after a board restart."""

    def __init__(self, root, kind: str):
        self.root, self.kind = root, kind
        self.dir = root.state_dir(kind)
        self.state_file = self.dir / "current.json"
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------------
    def current(self) -> Optional[RunState]:
        """The latest run (running or ended), read from its state file; a run whose process is gone
        without the board seeing it end (the board was restarted) is marked ended."""
        with self._lock:
            state = self._read()
            if state is not None and state.running and self._proc is None and not _alive(state.pid):
                state.ended = time.time()
                self._write(state)
            return state

    def _read(self) -> Optional[RunState]:
        try:
            return RunState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, state: RunState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(self.state_file)

    # -- start / stop --------------------------------------------------------------------------
    def start(self, command: Sequence[str], extra: Optional[Dict[str, str]] = None,
              env: Optional[Dict[str, str]] = None) -> RunState:
        """Start `command` in the root; refused (RuntimeError) while another run of this kind is going."""
        now = self.current()
        if now is not None and now.running:
            raise RuntimeError(f"a {self.kind} run is still going (pid {now.pid}); stop it first")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = self.dir / f"{stamp}.log"
        child_env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
        # the board's own checkout first, so the command works from any --root
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(command), cwd=self.root.path, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=child_env, start_new_session=True)
        state = RunState(self.kind, list(command), str(log), str(self.root.path), proc.pid, time.time(),
                         extra=dict(extra or {}))
        with self._lock:
            self._proc = proc
            self._write(state)
        threading.Thread(target=self._wait, args=(proc,), daemon=True).start()
        return state

    def _wait(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            state = self._read()
            if state is not None and state.pid == proc.pid:
                state.ended, state.returncode = time.time(), code
                self._write(state)
            if self._proc is proc:
                self._proc = None

    def stop(self) -> Optional[RunState]:
        """SIGINT to the run's process group (DeepSpeed's launcher passes it on to its workers); SIGTERM
        after STOP_GRACE_S, SIGKILL after as long again. Returns at once."""
        state = self.current()
        if state is None or not state.running:
            return state
        with self._lock:
            state.stop_requested = True
            self._write(state)
        self._signal(state.pid, signal.SIGINT)
        threading.Thread(target=self._escalate, args=(state.pid,), daemon=True).start()
        return state

    def _escalate(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.time() + STOP_GRACE_S
            while time.time() < deadline:
                if not _alive(pid):
                    self._reap(pid)
                    return
                time.sleep(0.2)
            self._signal(pid, sig)
        self._reap(pid)

    def _reap(self, pid: int) -> None:
        """A run started by an earlier board is not our child: mark it ended ourselves."""
        with self._lock:
            state = self._read()
            if self._proc is None and state is not None and state.pid == pid and state.running:
                state.ended = time.time()
                self._write(state)

    @staticmethod
    def _signal(pid: int, sig) -> None:
        try:
            os.killpg(pid, sig)  # the child leads its own session: its group id is its pid
        except (ProcessLookupError, PermissionError):
            pass
