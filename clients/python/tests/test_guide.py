"""Runs docs/partners.md: the bundle steps with the real CLI, then every
```python block of the guide, in order, as one program against a live hub."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

from conftest import ROOT, Hub, copex_bin

GUIDE = ROOT / "docs" / "partners.md"


def python_blocks(text: str) -> List[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_guide_runs_as_written(hub: Hub, tmp_path: Path) -> None:
    blocks = python_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 6, "the guide lost its snippets"
    cli = copex_bin()
    admin = ["--profile", str(hub.pki / "admin.toml")]

    def run(*args: str) -> None:
        subprocess.run([cli, *args], cwd=tmp_path, check=True, capture_output=True)

    # Step 1 as the guide gives it: request, register, sign, key beside the bundle.
    run("pki", "request", "--partner", "ecpat")
    run(*admin, "partners", "create", "ecpat", "--display-name", "ECPAT International", "--kind", "NGO",
        "--role", "contributor")
    run("pki", "sign", "--csr", "ecpat.csr", "--partner", "ecpat", "--hub", hub.url, "--dir", str(hub.pki))
    (tmp_path / "ecpat-bundle" / "ecpat.key").write_bytes((tmp_path / "ecpat.key").read_bytes())
    run("--profile", "ecpat-bundle/copex.toml", "whoami")
    # Something to find for the search step.
    run(*admin, "demo")

    program = tmp_path / "guide.py"
    program.write_text("\n\n".join(blocks), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPEX_")}
    done = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "connected as partners/ecpat ECPAT International" in out, out
    assert "partners/admin/workshops/igf2012-ws125" in out, out
    # Step 4 finds the demo practice for Kenya.
    assert "partners/admin/practices/sample-youth-panels |" in out, out
    # Step 5 narrows by a facet's value, and by owner (the hub is shared
    # with other tests, whose records may come first): the demo's practice
    # for Kenya is the admin's, and the first owner has records.
    assert re.search(r"^[1-9]\d* in Kenya, by owner: \{.*'partners/admin': [1-9]", out, re.M), out
    assert re.search(r"^[1-9]\d* records of partners/\S+$", out, re.M), out
    assert "caught up" in out, out
    assert "records mirrored" in out, out
    assert "partners/ecpat/tools/report-button CREATED" in out, out
    assert "partners/ecpat/tools/broken FAILED" in out, out
    assert "NOT_FOUND RESOURCE_NOT_FOUND False" in out, out
    assert "tool.sharing.tlp" in out, out
