"""A live hub for the tests: the real `copex serve` on a free port with a
fresh data directory and its development PKI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[3]


def copex_bin() -> str:
    path = os.environ.get("COPEX_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "copex"
    )
    if not Path(path).is_file():
        pytest.exit(f"no copex binary at {path}: build it (cargo build --release) or set COPEX_BIN", 2)
    return path


class Hub:
    def __init__(self, data: Path, extra_args: Sequence[str] = ()) -> None:
        self.data = data
        # More `copex serve` flags, e.g. short limits for one test's own hub.
        self.extra_args = list(extra_args)
        self.pki = data / "pki"
        self.proc: Optional["subprocess.Popen[str]"] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [copex_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data),
             *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=open(self.data.with_suffix(".log"), "ab"),
            env={**os.environ, "COPEX_RATE_LIMIT": "0"},
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.match(r"copex is serving on https://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError(f"copex serve did not start; see {self.data.with_suffix('.log')}")
        # Keep reading so the hub never blocks on a full pipe.
        import threading

        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def issue(self, partner: str, days: int = 30) -> Path:
        """A certificate for `partner` and its profile, DIR/partner.toml."""
        subprocess.run(
            [copex_bin(), "pki", "issue", "--dir", str(self.pki), "--partner", partner,
             "--days", str(days), "--profile-hub", self.url],
            check=True, capture_output=True,
        )
        return self.pki / f"{partner}.toml"

    def create_partner(self, partner: str, roles: Sequence[str] = ("contributor",)) -> Path:
        args = [copex_bin(), "--profile", str(self.pki / "admin.toml"), "partners", "create", partner,
                "--display-name", partner.upper()]
        for role in roles:
            args += ["--role", role]
        subprocess.run(args, check=True, capture_output=True)
        return self.issue(partner)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("hub") / "copex-data")
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No COPEX_* variables and no ./copex.toml: only what a test gives."""
    for name in ("COPEX_HUB", "COPEX_CA", "COPEX_CERT", "COPEX_KEY", "COPEX_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


os.environ.setdefault("GRPC_VERBOSITY", "NONE")
sys.path.insert(0, str(Path(__file__).parent))
