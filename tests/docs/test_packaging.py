"""The built distribution, installed as a user would: one top-level name, and it runs.

The wheel is built from the sdist (``python -m build``'s default), so a file
the sdist forgets fails here too. It installs into a fresh venv, and every
check runs from a directory holding an application's own ``service.py`` and
``protocol.py``, the names pipework used to install at the top level.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

ROOT = Path(__file__).resolve().parents[2]

APP_SERVICE = "WHO = 'the application'\n"

CHECKS = """
import importlib.util, sys
import pipework
from pipework import Client, AsyncClient, WorkerService, task, PipeworkError
import service, protocol  # the application's own modules
assert service.WHO == 'the application', service.__file__
assert protocol.WHO == 'the application', protocol.__file__
assert importlib.util.find_spec('benchmarks') is None
assert pipework.__version__ != '0+unknown', pipework.__version__

def square(x):
    return x * x

if __name__ == '__main__':
    with WorkerService(max_workers=2) as pool:
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]
    print('ok', pipework.__version__)
"""

PROTOCOL_ALONE = """
import sys
import pipework.protocol
from pipework.protocol import Client
print([m for m in sys.modules if m.startswith('pipework.service')])
"""


@pytest.mark.timeout(300)
def test_wheel_installs_under_one_name_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = dist.glob("pipework-*.whl")
    assert list(dist.glob("pipework-*.tar.gz")), "no sdist"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"pipework", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for expected in (
        "pipework/__init__.py",
        "pipework/py.typed",
        "pipework/service/worker.py",
        "pipework/service/daemon/server.py",
        "pipework/service/ops/status_page.html",
        "pipework/protocol/client.py",
        "pipework/benchmarks/pool.py",
    ):
        assert expected in names, expected

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "service.py").write_text(APP_SERVICE)
    (app / "protocol.py").write_text(APP_SERVICE)
    (app / "main.py").write_text(CHECKS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    env["HOME"] = str(tmp_path)
    env.pop("XDG_STATE_HOME", None)
    (tmp_path / "run").mkdir(mode=0o700)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` from the venv's bin/, in the application's directory."""
        return subprocess.run(
            [str(venv / "bin" / argv[0]), *argv[1:]],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = run("python", "main.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
    alone = run("python", "-c", PROTOCOL_ALONE)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == "[]", "pipework.protocol imported pipework.service"
    demo = run("pipework", "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
