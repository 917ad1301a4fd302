"""Fork server of the local backend: imports torch and the tensor server once, then forks one server per Compute.

Starting ``python -m skytorch.server`` costs about a second of CPU, almost all of it
``import torch``; eight of them at once on a small machine take several times as
long as one. This helper pays the import once and forks each server from the
warm image (copy-on-write), so eight Computes become ready about as fast as one.

Protocol (JSON lines): the local backend writes ``{"id", "args", "env", "log"}``
to stdin; the zygote forks, answers ``{"id", "pid"}`` (or ``{"id", "error"}``),
and later ``{"exit": pid, "code": returncode}`` when that server ends (a signal
N is reported as ``-N``, as :mod:`subprocess` does). EOF on stdin: the zygote
stops its servers (SIGTERM, SIGKILL after a grace) and exits.

Lifetime: the zygote dies with the backend's process (``PR_SET_PDEATHSIG``, set
by the spawner), and every server dies with the zygote (the same, set here after
each fork), so no server outlives the process that asked for it.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def _child(args: list[str], env: dict[str, str], log: str, zygote_pid: int) -> None:
    """In the forked child: become an independent server process and run it; never returns."""
    code = 1
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote_pid:
            os._exit(1)
        os.setsid()
        os.closerange(3, 1 << 16)  # the protocol pipes and the selector belong to the fork server
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        sys.argv = ["skytorch.server", *args]
        from skytorch.server.__main__ import main

        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> int:
    """Run the fork server on stdin/stdout until stdin closes."""
    import skytorch.server  # noqa: F401  the expensive part: torch and the server, imported once
    import skytorch.server.__main__  # noqa: F401

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing else may write on the protocol channel
    me = os.getpid()
    children: set[int] = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: os.write(wake_w, b"x"))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    buffer = b""

    def reap() -> None:
        """Collect exited servers and report each exit to the backend."""
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            try:
                out.write(json.dumps({"exit": pid, "code": code}) + "\n")
            except OSError:  # the backend is gone
                pass

    out.write(json.dumps({"ready": me}) + "\n")
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                reap()
                continue
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                _stop_all(children)
                reap()
                return 0
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    out.write(json.dumps({"id": request["id"], "error": str(exc)}) + "\n")
                    continue
                if pid == 0:
                    _child(request["args"], request["env"], request["log"], me)
                children.add(pid)
                out.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        reap()


def _stop_all(children: set[int], grace: float = 2.0) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            children.discard(pid)
        else:
            time.sleep(0.02)
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(serve())
