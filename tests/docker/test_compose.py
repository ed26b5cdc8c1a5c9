"""docker/compose.yaml, config/node-docker.yaml and docker/orthanc/ agree with each other and the images.

No Docker engine runs the compose file here, so what would only show as a node that Orthanc cannot
reach, or a worker that reads another config than the node, is checked as text.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from urllib.parse import urlparse

import yaml

from scp_server.config import NodeSettings, load_settings
from tests.docker.autoroute_scenario import orthanc_settings
from tests.docker.dockerfiles import DOCKER, DOCKERFILES, ROOT, final_stage

SERVICES: dict = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
NODE_CONFIG = ROOT / "config" / "node-docker.yaml"


def image_config_path() -> str:
    """Where the images' CMD reads the node configuration."""
    command = json.loads(dict(final_stage(DOCKERFILES[0]))["CMD"])
    return command[command.index("--config") + 1]


def mounts(service: str) -> dict[str, str]:
    """A service's volumes: container path -> named volume, or path from the repository root."""
    found = {}
    for volume in SERVICES[service]["volumes"]:
        source, target, *_mode = volume.split(":")
        found[target] = str((DOCKER / source).resolve().relative_to(ROOT)) if "/" in source else source
    return found


def test_node_docker_yaml_is_a_valid_configuration_for_a_receiving_node_on_redis() -> None:
    settings = load_settings(NODE_CONFIG)
    assert (settings.queue.backend, settings.workers, settings.bind_address) == ("redis", 0, "0.0.0.0")


def test_node_and_workers_run_the_images_with_the_shared_spool_and_the_config_the_image_reads() -> None:
    settings = load_settings(NODE_CONFIG)
    config = image_config_path()
    for name, role, dockerfile in [
        ("node", "serve", "docker/Dockerfile"),
        ("worker", "worker", "docker/Dockerfile"),
        ("worker-gpu", "worker", "docker/Dockerfile.cuda"),
    ]:
        service = SERVICES[name]
        assert service["build"]["dockerfile"] == dockerfile, name
        assert (DOCKER / service["build"]["context"]).resolve() == ROOT, name
        assert service["command"] == [role, "--config", config], name
        assert mounts(name) == {config: "config/node-docker.yaml", str(settings.spool_dir): "spool"}, name
        assert service["volumes"][1].endswith(":ro"), f"{name}: mount the configuration read-only"


def test_the_node_answers_the_healthcheck_and_only_it_has_one() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert load_settings(NODE_CONFIG).http_port == healthcheck.DEFAULT_HTTP_PORT
    assert NodeSettings.model_fields["http_port"].default == healthcheck.DEFAULT_HTTP_PORT
    # `n2d worker` serves no HTTP: the image's healthcheck would call every worker unhealthy.
    assert "healthcheck" not in SERVICES["node"]
    assert all(SERVICES[name]["healthcheck"] == {"disable": True} for name in ("worker", "worker-gpu"))


def test_the_queue_is_the_redis_service() -> None:
    url = urlparse(load_settings(NODE_CONFIG).queue.redis_url)
    assert url.hostname == "redis" and url.hostname in SERVICES
    assert url.port == 6379 and "--port" not in SERVICES["redis"]["command"]


def test_orthanc_and_the_node_know_each_other_by_the_same_titles_hosts_and_ports() -> None:
    settings = load_settings(NODE_CONFIG)
    orthanc = orthanc_settings()
    assert orthanc["DicomModalities"]["n2d"] == [settings.ae_title, "node", settings.port]
    assert "node" in SERVICES
    assert settings.allowed_calling_aets == [orthanc["DicomAet"]]
    (route,) = settings.routes
    assert [(d.ae_title, d.host, d.port) for d in route.destinations] == [
        (orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
    ]


def test_orthanc_reads_the_committed_configuration_and_keeps_its_data_in_a_volume() -> None:
    orthanc = orthanc_settings()
    volumes = mounts("orthanc")
    assert volumes["/etc/orthanc"] == "docker/orthanc"
    (script,) = orthanc["LuaScripts"]
    assert (DOCKER / "orthanc" / Path(script).relative_to("/etc/orthanc")).is_file()
    assert volumes[orthanc["StorageDirectory"]] == "orthanc-db"
    assert orthanc["IndexDirectory"] == orthanc["StorageDirectory"]


def test_the_gpu_worker_is_an_opt_in_profile_reserving_an_nvidia_gpu() -> None:
    worker = SERVICES["worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_pulled_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if "build" not in service:
            _, _, tag = service["image"].rpartition(":")
            pinned = tag != "latest" and any(character.isdigit() for character in tag)
            assert pinned, f"{name}: pin {service['image']} to a version"
