"""What the Python benchmarks share: free ports, waiting on a condition, and the services started
from target/<profile>/ with their logs in a temporary directory, stopped at the end."""
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, what, timeout=30.0):
    """Polls `pred` until it holds; exits with a message naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.01)
    sys.exit(f"timed out waiting for {what}")


class Services:
    """Binaries of one build profile, started with `start` and stopped (SIGTERM, then SIGKILL after
    10 s) when the `with` block ends. `tmp` holds their logs."""

    def __init__(self, profile: str, prefix: str):
        self.bins = os.path.join(ROOT, "target", profile)
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.base = {"PATH": os.environ.get("PATH", ""), "LOCAL_PROVIDER_LOG_LEVEL": "warning"}
        self.procs = []

    def start(self, name: str, env: dict) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        path = os.path.join(self.bins, name)
        if name == "scripted-peer" and not os.path.exists(path):
            # The peer is test tooling; a debug build of it serves a release measurement.
            path = os.path.join(ROOT, "target", "debug", name)
        self.procs.append(subprocess.Popen([path], env={**self.base, **env}, stdout=log, stderr=log))
        return self.procs[-1]

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
