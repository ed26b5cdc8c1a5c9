"""The images without a Docker engine: Dockerfiles linted and compared, their install run for real.

CI has no Docker engine (nor a registry to pull base images from), so the images are never built
there. What is proven instead: both Dockerfiles pass hadolint and run the same final stage, what
they copy is in their build context, and docker/install.sh, the one install step both images run,
installs a working node into a fresh virtual environment, whose n2d-healthcheck (the images'
HEALTHCHECK) tells a running node from a missing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import n2d_dicom
from tests.docker.dockerfiles import DOCKER, DOCKERFILES, ROOT, final_stage, instructions
from tests.helpers import free_port
from tests.integration.orthanc_scenario import listening, wait


def dev_tool(name: str) -> str:
    """A linter of the dev extra, installed beside this interpreter."""
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{name} not found beside {sys.executable}: pip install -e '.[dev]'"
    return str(path)


@pytest.mark.parametrize(
    ("linter", "options", "path"),
    [
        # hadolint also fails an untagged or ":latest" base image (DL3006, DL3007).
        ("hadolint", ["--no-color", "--failure-threshold", "info"], DOCKERFILES[0]),
        ("hadolint", ["--no-color", "--failure-threshold", "info"], DOCKERFILES[1]),
        ("shellcheck", [], DOCKER / "install.sh"),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else None,
)
def test_passes_its_linter(linter: str, options: list[str], path: Path) -> None:
    result = subprocess.run([dev_tool(linter), *options, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_and_cuda_images_end_in_the_same_non_root_stage() -> None:
    stage = final_stage(DOCKERFILES[0])
    assert stage == final_stage(DOCKERFILES[1])
    settings = dict(stage)
    user = settings["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric, non-root uid"
    assert settings["HEALTHCHECK"].endswith('CMD ["n2d-healthcheck"]')
    assert json.loads(settings["ENTRYPOINT"]) == ["n2d"]
    assert json.loads(settings["VOLUME"]) == ["/spool", "/config"]
    assert settings["EXPOSE"].split() == ["11112", "8080"]


def test_what_the_images_copy_exists_and_is_in_their_build_context() -> None:
    ignore = DOCKER / "Dockerfile.dockerignore"
    assert (DOCKER / "Dockerfile.cuda.dockerignore").resolve() == ignore.resolve()
    kept = {line[1:] for line in ignore.read_text().splitlines() if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for keyword, arguments in instructions(dockerfile):
            if keyword == "COPY" and not arguments.startswith("--from"):
                *sources, _target = arguments.split()
                for source in sources:
                    where = f"{dockerfile.name} copies {source}"
                    assert (ROOT / source).exists(), f"{where}, which is missing"
                    assert source in kept, f"{where}, which {ignore.name} leaves out"


@pytest.mark.slow
def test_install_script_installs_a_node_whose_healthcheck_tells_up_from_down(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    install = subprocess.run(
        ["bash", str(DOCKER / "install.sh"), str(venv)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-5000:]
    version = subprocess.run([venv / "bin" / "n2d", "version"], capture_output=True, text=True)
    assert version.stdout.strip() == n2d_dicom.__version__
    # Installed into the environment, not linked to the source tree (the image keeps no source),
    # with the Redis client that the compose file's queue needs.
    located = subprocess.run(
        [venv / "bin" / "python", "-c", "import redis, scp_server; print(scp_server.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout + located.stderr

    # The compose file's node configuration, with what needs the compose network overridden.
    http_port = free_port()
    env = {
        **os.environ,
        "N2D_HTTP_PORT": str(http_port),
        "N2D_PORT": str(free_port()),
        "N2D_BIND_ADDRESS": "127.0.0.1",
        "N2D_SPOOL_DIR": str(tmp_path / "spool"),
        "N2D_QUEUE__BACKEND": "sqlite",
    }
    healthcheck = [venv / "bin" / "n2d-healthcheck"]
    assert subprocess.run(healthcheck, env=env, capture_output=True).returncode == 1, "healthy with no node"
    log = tmp_path / "node.log"
    with log.open("w") as output:
        node = subprocess.Popen(
            [venv / "bin" / "n2d", "serve", "--config", ROOT / "config" / "node-docker.yaml"],
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait(lambda: node.poll() is not None or listening(http_port), "the node's HTTP port", timeout=60)
        assert node.poll() is None, log.read_text()[-5000:]
        result = subprocess.run(healthcheck, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
