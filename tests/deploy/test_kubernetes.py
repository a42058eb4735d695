"""deploy/kubernetes, proven without a cluster: the base and the single-node overlay
render (here, and with kubectl's kustomize where it is installed: the same objects),
every object validates against the Kubernetes API schemas (strict: no unknown fields)
of the oldest and newest versions we support, and the objects agree with the app itself:
settings names and values (webapp/config.py SETTINGS), routes (probes, Ingress paths,
/metrics kept out), ports, volumes, the Secret's keys (as docs/kubernetes.md creates
it), label selectors and deploy/nginx.conf's limits.  Breaking any of them in a copy of
the objects is reported by name (the "broken" tests).

The training runner Deployment rests on ``JOB_RUNNER=external`` and ``python -m
webapp.jobs watch``; they are tested here on real processes: a serving app that never
starts a training process, and a pod-like run -- root filesystem read-only, only the
manifests' volumes writable, environment exactly the manifests' -- of gunicorn and the
watch, from an empty volume to a trained model served, then a runner stopped mid-job.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from testkit import ROOT
from testkit.admin import BEARER, TOKEN
from testkit.deploy import dockerfile, env_of
from testkit.kustomize import render
from testkit.photos import CAT_CLASSES, encode, photo
from testkit.server import Server, free_port
from testkit.shapes import draw
from testkit.teach import (
    LONG,
    Client,
    build,
    make_app,
    models_in,
    pid_gone,
    training,
    wait_job,
    work_files,
)
from webapp.config import SETTINGS, Config, ConfigError, plan_concurrency

KUBE = ROOT / "deploy" / "kubernetes"
LAYOUTS = {"base": KUBE / "base", "single-node": KUBE / "overlays" / "single-node"}
DOCS = ROOT / "docs" / "kubernetes.md"
# The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by
# default from 1.30) and the newest the schemas package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

SERVER, RUNNER = "classifier", "classifier-runner"  # the two Deployments
SECRET_SETTINGS = ("ADMIN_TOKEN", "SECRET_KEY")  # never in a ConfigMap
# Written at run time: each must be on a writable mount (the root filesystem is not).
WRITTEN_SETTINGS = ("MODEL_DIR", "DATA_DIR", "KIOSK_SETTINGS_FILE", "ENGINE_CACHE_DIR",
                    "PROMETHEUS_MULTIPROC_DIR")
# Variables for libraries, not the app's settings (a container may set them).
LIBRARY_ENV = {"MPLCONFIGDIR": "matplotlib's config and font cache (written)"}
# Which pods each selector must pick, by the Deployment that makes them.
SELECTS = {
    ("Deployment", SERVER): {SERVER},
    ("Deployment", RUNNER): {RUNNER},
    ("Service", "classifier"): {SERVER},
    ("PodDisruptionBudget", "classifier"): {SERVER},
    ("NetworkPolicy", "classifier"): {SERVER},
    ("NetworkPolicy", "classifier-runner"): {RUNNER},
}
INGRESS_CONTROLLERS = ("nginx.ingress.kubernetes.io", "nginx.org")


# --------------------------------------------------------------------------- reading


@functools.cache
def rendered(layout: str) -> tuple:
    return tuple(render(LAYOUTS[layout]))


def objects(layout: str) -> list[dict]:
    """A private copy of the rendered objects (the broken tests change theirs)."""
    return copy.deepcopy(list(rendered(layout)))


def find(objs, kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def the(objs, kind: str, name: str) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    return pod_spec(deployment)["containers"][0]


def kubectl_create_secret() -> tuple[str, set[str]]:
    """The Secret as docs/kubernetes.md creates it: its name and its keys (the Secret is
    not in the manifests; its values are the site's)."""
    text = DOCS.read_text("utf-8").replace("\\\n", " ")
    match = re.search(r"kubectl (?:-n \S+ )?create secret generic (\S+)(.*)", text)
    assert match, "docs/kubernetes.md: no `kubectl create secret generic` command"
    keys = set(re.findall(r"--from-literal=(\w+)=", match.group(2)))
    return match.group(1), keys


def container_env(objs, deployment: dict, secrets: dict | None = None) -> dict[str, str]:
    """The environment the container starts with: the image's ENV, then envFrom
    ConfigMaps, then env (Secret values from ``secrets``, else a placeholder)."""
    env = env_of(dockerfile())
    spec = container(deployment)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            maps = find(objs, "ConfigMap", source["configMapRef"]["name"])
            for config_map in maps:
                env.update(config_map.get("data", {}))
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (secrets or {}).get(ref["key"], f"<{ref['name']}/{ref['key']}>")
    return env


def routes() -> dict[str, str]:
    """URL rule -> endpoint of the app (admin's included)."""
    from webapp import create_app

    app = create_app({"TESTING": True, "ADMIN_TOKEN": "x" * 24})
    return {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}


ROUTES = functools.cache(routes)


def route_of(endpoint: str) -> str:
    return next(rule for rule, name in ROUTES().items() if name == endpoint)


def nginx_conf() -> dict:
    """deploy/nginx.conf as nested blocks: {"": {directive: value}, block header: {...}}."""
    text = re.sub(r"#.*", "", (ROOT / "deploy" / "nginx.conf").read_text("utf-8"))
    root: dict = {"": {}}
    stack = [root]
    for token in re.findall(r"[^{};]+[{;]|}", text):
        token = " ".join(token.split())
        if token == "}":
            stack.pop()
        elif token.endswith("{"):
            block: dict = {"": {}}
            stack[-1][token[:-1].strip()] = block
            stack.append(block)
        else:
            name, _, value = token[:-1].partition(" ")
            stack[-1][""][name] = value
    return root


def ingress_paths_match(ingress_paths: list[tuple[str, str]], url: str) -> bool:
    """Whether an Ingress with these (path, pathType) routes ``url`` (Kubernetes'
    matching: Exact is equality, Prefix compares whole path elements)."""
    for path, kind in ingress_paths:
        if kind == "Exact" and url == path:
            return True
        if kind == "Prefix":
            want = [p for p in path.split("/") if p]
            have = [p for p in url.split("/") if p]
            if have[:len(want)] == want:
                return True
    return False


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (512Mi, 2Gi, 1G...) in MiB."""
    units = {"": 2**-20, "Ki": 2**-10, "Mi": 1, "Gi": 2**10, "k": 1e3 / 2**20,
             "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity))
    return float(match.group(1)) * units[match.group(2)]


def nginx_mb(size: str) -> float:
    """An nginx size (21m, 1024k, 1g) in MiB."""
    units = {"": 2**-20, "k": 2**-10, "m": 1, "g": 2**10}
    match = re.fullmatch(r"(\d+)([kmg]?)", size.lower())
    return int(match.group(1)) * units[match.group(2)]


def cpus(quantity: str) -> float:
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --------------------------------------------------------------------------- the checks


def problems(objs: list[dict]) -> list[str]:
    """Everything in ``objs`` that disagrees with the app or with itself, in words."""
    out: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in find(objs, "Deployment")}
    for name in (SERVER, RUNNER):
        if name not in deployments:
            return [f"no Deployment {name}"]
    server, runner = deployments[SERVER], deployments[RUNNER]
    secret_name, secret_keys = kubectl_create_secret()
    settings = {s.name for s in SETTINGS}
    envs = {name: container_env(objs, d) for name, d in deployments.items()}

    # Selectors: each picks exactly the pods it is meant to.
    pod_labels = {name: d["spec"]["template"]["metadata"].get("labels", {})
                  for name, d in deployments.items()}

    def picked(selector: dict | None) -> set[str]:
        selector = selector or {}
        return {name for name, labels in pod_labels.items()
                if all(labels.get(k) == v for k, v in selector.items())}

    selectors = {
        ("Deployment", n): d["spec"]["selector"].get("matchLabels")
        for n, d in deployments.items()}
    selectors.update({("Service", s["metadata"]["name"]): s["spec"].get("selector")
                      for s in find(objs, "Service")})
    selectors.update({("PodDisruptionBudget", p["metadata"]["name"]):
                      p["spec"]["selector"].get("matchLabels")
                      for p in find(objs, "PodDisruptionBudget")})
    selectors.update({("NetworkPolicy", p["metadata"]["name"]):
                      p["spec"]["podSelector"].get("matchLabels")
                      for p in find(objs, "NetworkPolicy")})
    for key, selector in selectors.items():
        want = SELECTS.get(key)
        if want is None:
            out.append(f"{key[0]}/{key[1]}: no expectation for what it selects (add it to SELECTS)")
        elif picked(selector) != want:
            out.append(f"{key[0]}/{key[1]}: selector {selector} picks the pods of "
                       f"{sorted(picked(selector))}, not of {sorted(want)}")

    # Settings: names, values, the Secret, the runner mode.
    for config_map in find(objs, "ConfigMap"):
        for key in config_map.get("data", {}):
            if key not in settings:
                out.append(f"ConfigMap/{config_map['metadata']['name']}: {key} is not a "
                           "setting of webapp/config.py")
            if key in SECRET_SETTINGS:
                out.append(f"ConfigMap/{config_map['metadata']['name']}: {key} belongs in "
                           f"the Secret {secret_name}")
    for name, deployment in deployments.items():
        spec = container(deployment)
        for item in spec.get("env", []):
            if item["name"] not in settings and item["name"] not in LIBRARY_ENV:
                out.append(f"Deployment/{name}: env {item['name']} is not a setting")
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            if ref["name"] != secret_name or ref["key"] not in secret_keys:
                out.append(f"Deployment/{name}: env {item['name']} takes key {ref['key']!r} "
                           f"of Secret {ref['name']!r}, which docs/kubernetes.md does not "
                           f"create (it creates {secret_name!r} with {sorted(secret_keys)})")
            if ref["key"] != item["name"]:
                out.append(f"Deployment/{name}: env {item['name']} from Secret key "
                           f"{ref['key']!r}: name the key like the setting")
        try:
            Config.from_env(envs[name])
        except ConfigError as exc:
            out.append(f"Deployment/{name}: the app refuses its settings: {exc}")
    for key in SECRET_SETTINGS:
        refs = [i for i in container(server).get("env", []) if i["name"] == key
                and "secretKeyRef" in i.get("valueFrom", {})]
        if not refs:
            out.append(f"Deployment/{SERVER}: {key} does not come from the Secret")
    if envs[SERVER].get("JOB_RUNNER") != "external":
        out.append(f"Deployment/{SERVER}: JOB_RUNNER must be external (serving pods never "
                   "train; the runner Deployment does)")
    if container(runner).get("command") != ["python", "-m", "webapp.jobs", "watch"]:
        out.append(f"Deployment/{RUNNER}: command must be python -m webapp.jobs watch")
    if envs[SERVER].get("TRUSTED_PROXIES") != "1":
        out.append("TRUSTED_PROXIES must be 1: one proxy (the ingress controller) in front")
    if envs[SERVER].get("HOST") != "0.0.0.0":
        out.append(f"HOST={envs[SERVER].get('HOST')}: probes and the Service need 0.0.0.0")

    # Ports: the container listens on PORT; probes, the Service, the NetworkPolicy and
    # Prometheus use that port.
    port = int(envs[SERVER].get("PORT", 0))
    ports = {p.get("name"): p["containerPort"] for p in container(server).get("ports", [])}
    if port not in ports.values():
        out.append(f"Deployment/{SERVER}: containerPort {sorted(ports.values())} but the app "
                   f"listens on PORT={port}")

    def port_ok(ref) -> bool:
        return ref in ports if isinstance(ref, str) else ref == port and ref in ports.values()

    probes = {"startupProbe": "api.healthz", "livenessProbe": "api.healthz",
              "readinessProbe": "api.readyz"}
    for probe, endpoint in probes.items():
        got = container(server).get(probe, {}).get("httpGet")
        if got is None:
            out.append(f"Deployment/{SERVER}: no {probe}")
            continue
        if got["path"] != route_of(endpoint):
            out.append(f"Deployment/{SERVER}: {probe} asks {got['path']}, the app's route "
                       f"for it is {route_of(endpoint)}")
        if not port_ok(got["port"]):
            out.append(f"Deployment/{SERVER}: {probe} port {got['port']!r} is not the "
                       f"container's port ({port})")
    annotations = server["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != str(port):
        out.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} != PORT {port}")
    if annotations.get("prometheus.io/path") != route_of("metrics.metrics_endpoint"):
        out.append(f"prometheus.io/path {annotations.get('prometheus.io/path')} is not the "
                   "app's /metrics route")
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    for service in services.values():
        for entry in service["spec"]["ports"]:
            if not port_ok(entry["targetPort"]):
                out.append(f"Service/{service['metadata']['name']}: targetPort "
                           f"{entry['targetPort']!r} is not the container's port")
    for policy in find(objs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for entry in rule.get("ports", []):
                if not port_ok(entry["port"]):
                    out.append(f"NetworkPolicy/{policy['metadata']['name']}: port "
                               f"{entry['port']!r} is not the container's port")

    # Ingress: backends exist; every route but /metrics is routed; nginx.conf's limits.
    routed: list[tuple[str, str]] = []
    for ingress in find(objs, "Ingress"):
        name = ingress["metadata"]["name"]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                target = services.get(backend["name"])
                wanted = backend["port"].get("name", backend["port"].get("number"))
                if target is None:
                    out.append(f"Ingress/{name}: backend Service {backend['name']} does not exist")
                elif wanted not in [p.get("name") for p in target["spec"]["ports"]] + \
                        [p["port"] for p in target["spec"]["ports"]]:
                    out.append(f"Ingress/{name}: Service {backend['name']} has no port {wanted!r}")
                routed.append((path["path"], path["pathType"]))
    metrics = route_of("metrics.metrics_endpoint")
    # Classroom mode's CA (CLASSROOM=1: one machine serving its own TLS) is never behind
    # an ingress; the route answers 404 there.
    classroom_only = route_of("classroom.ca_certificate")
    for rule in ROUTES():
        url = re.sub(r"<[^>]+>", "x", rule)
        if rule == metrics and ingress_paths_match(routed, url):
            out.append(f"Ingress: {metrics} is routed; it must stay private")
        elif rule not in (metrics, classroom_only) and not ingress_paths_match(routed, url):
            out.append(f"Ingress: the app's route {rule} is not routed")
    for path, kind in routed:
        if not any(ingress_paths_match([(path, kind)], re.sub(r"<[^>]+>", "x", rule))
                   for rule in ROUTES()):
            out.append(f"Ingress: path {path} ({kind}) matches no route of the app")
    out += ingress_limits(objs, envs[SERVER])

    # Volumes: mounts exist, claims exist, written paths are on writable mounts, the
    # runner sees the store where the server does.
    claims = {c["metadata"]["name"] for c in find(objs, "PersistentVolumeClaim")}
    for name, deployment in deployments.items():
        pod = pod_spec(deployment)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = container(deployment).get("volumeMounts", [])
        for mount in mounts:
            if mount["name"] not in volumes:
                out.append(f"Deployment/{name}: volumeMount {mount['name']!r} has no volume")
        for volume in volumes.values():
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                out.append(f"Deployment/{name}: claim {claim!r} does not exist")
        writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
        env = envs[name]
        written = [(k, env.get(k)) for k in WRITTEN_SETTINGS if env.get(k)]
        written += [("temporary files", env.get("TMPDIR", "/tmp"))]
        written += [(k, env[k]) for k in LIBRARY_ENV if env.get(k)]
        for what, path in written:
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable):
                out.append(f"Deployment/{name}: {what} ({path}) is not on a writable volume "
                           "(the root filesystem is read-only)")
        security = container(deployment).get("securityContext", {})
        pod_security = pod.get("securityContext", {})
        if not security.get("readOnlyRootFilesystem") or security.get(
                "allowPrivilegeEscalation", True) or not pod_security.get("runAsNonRoot"):
            out.append(f"Deployment/{name}: must run non-root, read-only root filesystem, "
                       "no privilege escalation")
        resources = container(deployment).get("resources", {})
        for resource, measure in (("cpu", cpus), ("memory", mebibytes)):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            if request is None or limit is None:
                out.append(f"Deployment/{name}: no {resource} request or limit")
            elif measure(request) > measure(limit):
                out.append(f"Deployment/{name}: {resource} request {request} > limit {limit}")

    def store(deployment):
        pod = pod_spec(deployment)
        volumes = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                   for v in pod.get("volumes", [])}
        return {(m["mountPath"], volumes.get(m["name"]))
                for m in container(deployment).get("volumeMounts", [])
                if volumes.get(m["name"])}

    for key in ("MODEL_DIR", "DATA_DIR"):
        if envs[SERVER].get(key) != envs[RUNNER].get(key):
            out.append(f"{key} differs between the server and the runner")
    if not store(server) or store(server) != store(runner):
        out.append("the server and the runner must mount the same claim at the same path")
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text("utf-8")).group(1)
    for name, deployment in deployments.items():
        if str(pod_spec(deployment).get("securityContext", {}).get("runAsUser")) != uid:
            out.append(f"Deployment/{name}: runAsUser must be the image's user ({uid})")
    return out


def ingress_limits(objs: list[dict], env: dict) -> list[str]:
    """The Ingresses' annotations carry deploy/nginx.conf's limits, for both controllers,
    and let the app's own limits through."""
    out = []
    conf = nginx_conf()
    http = conf["http"]
    server = http["server"]
    classify = next(block[""] for key, block in server.items()  # /predict, /explain, infer
                    if key.startswith("location ~ ^/(predict|explain"))
    admin = server["location /admin/"][""]

    def seconds(value: str, prefix: str) -> str:  # ingress-nginx: "120"; nginx.org: "120s"
        return value.rstrip("s") if prefix == "nginx.ingress.kubernetes.io" else value

    expected = {
        "classifier": {
            "body": http[""]["client_max_body_size"],
            "client-body-buffer-size": http[""]["client_body_buffer_size"],
            "proxy-connect-timeout": server[""]["proxy_connect_timeout"],
            "proxy-send-timeout": server[""]["proxy_send_timeout"],
            "proxy-read-timeout": server[""]["proxy_read_timeout"],
            "proxy-next-upstream": classify["proxy_next_upstream"],
            "proxy-next-upstream-tries": classify["proxy_next_upstream_tries"],
        },
        "classifier-admin": {
            "body": admin["client_max_body_size"],
            "proxy-connect-timeout": server[""]["proxy_connect_timeout"],
            "proxy-send-timeout": server[""]["proxy_send_timeout"],
            "proxy-read-timeout": admin["proxy_read_timeout"],
        },
    }
    for name, want in expected.items():
        found = find(objs, "Ingress", name)
        if not found:
            out.append(f"no Ingress {name}")
            continue
        annotations = found[0]["metadata"].get("annotations", {})
        for prefix in INGRESS_CONTROLLERS:
            for key, value in want.items():
                if key == "body":
                    key = {"nginx.org": "client-max-body-size"}.get(prefix, "proxy-body-size")
                elif key.endswith("timeout"):
                    value = seconds(value, prefix)
                got = annotations.get(f"{prefix}/{key}")
                if got != value:
                    out.append(f"Ingress/{name}: {prefix}/{key} is {got!r}, nginx.conf "
                               f"has {value!r}")
        retries = annotations.get("nginx.ingress.kubernetes.io/proxy-next-upstream", "")
        if name != "classifier" and "non_idempotent" in retries:
            out.append(f"Ingress/{name}: retries non-idempotent requests")
        if name == "classifier-admin" and admin.get("proxy_request_buffering") == "off" and \
                annotations.get("nginx.ingress.kubernetes.io/proxy-request-buffering") != "off":
            out.append(f"Ingress/{name}: checkpoint uploads must stream (request buffering off)")
    try:
        config = Config.from_env(env)
    except ConfigError:  # reported by problems()
        return out
    if nginx_mb(expected["classifier"]["body"]) <= config["MAX_UPLOAD_MB"]:
        out.append("the Ingress body limit must exceed MAX_UPLOAD_MB")
    if nginx_mb(expected["classifier-admin"]["body"]) <= max(
            config["MAX_CHECKPOINT_MB"], config["MAX_DATASET_MB"]):
        out.append("the admin Ingress body limit must exceed MAX_CHECKPOINT_MB and MAX_DATASET_MB")
    return out


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kubectl_kustomize_renders_the_same_objects(layout):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: only this project's renderer was used")
    out = subprocess.run([kubectl, "kustomize", str(LAYOUTS[layout])], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    theirs = [doc for doc in yaml.safe_load_all(out) if doc]

    def key(obj):
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(theirs, key=key) == sorted(rendered(layout), key=key)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_object_validates_against_the_kubernetes_schemas(layout, version):
    for obj in rendered(layout):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{layout}: {obj['kind']}/{obj['metadata']['name']} at {path}: "
                        f"{exc.message} (Kubernetes {version})")


def test_the_schemas_catch_a_misspelt_field():
    """Strict validation is on: a typo is not silently dropped by the API server."""
    deployment = copy.deepcopy(the(rendered("base"), "Deployment", SERVER))
    probe = container(deployment)["readinessProbe"]
    probe["httpget"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpget"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_base_is_what_the_issue_asks_for():
    objs = rendered("base")
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["ConfigMap", "PersistentVolumeClaim", "Deployment", "Deployment",
                            "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                            "Ingress", "Ingress", "NetworkPolicy", "NetworkPolicy"])
    assert {o["metadata"]["namespace"] for o in objs} == {"offline-classifier"}
    server, runner = the(objs, "Deployment", SERVER), the(objs, "Deployment", RUNNER)
    assert server["spec"]["replicas"] == 3 and runner["spec"]["replicas"] == 1
    assert runner["spec"]["strategy"]["type"] == "Recreate"
    assert the(objs, "PersistentVolumeClaim", "classifier-data")["spec"]["accessModes"] == \
        ["ReadWriteMany"]
    hpa = the(objs, "HorizontalPodAutoscaler", "classifier")
    assert hpa["spec"]["scaleTargetRef"]["name"] == SERVER
    assert hpa["spec"]["minReplicas"] <= server["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    # The CPU limit decides the workers: 2 CPUs = 2 workers x 2 threads, as measured.
    limit = cpus(container(server)["resources"]["limits"]["cpu"])
    assert plan_concurrency(cpus=int(limit), dual=True) == (2, 2)
    # Only the monitoring namespace and the ingress controller reach the serving pods.
    policy = the(objs, "NetworkPolicy", "classifier")["spec"]
    sources = [json.dumps(rule["from"], sort_keys=True) for rule in policy["ingress"]]
    assert any("monitoring" in s for s in sources) and any("ingress-nginx" in s for s in sources)
    assert policy["egress"] == [] and the(objs, "NetworkPolicy", "classifier-runner")[
        "spec"]["ingress"] == []


def test_the_single_node_overlay_is_one_replica_on_a_read_write_once_volume():
    objs = rendered("single-node")
    assert the(objs, "Deployment", SERVER)["spec"]["replicas"] == 1
    assert the(objs, "PersistentVolumeClaim", "classifier-data")["spec"]["accessModes"] == \
        ["ReadWriteOnce"]
    assert not find(objs, "HorizontalPodAutoscaler") and not find(objs, "PodDisruptionBudget")
    assert {i["spec"]["ingressClassName"] for i in find(objs, "Ingress")} == {"traefik"}
    policy = the(objs, "NetworkPolicy", "classifier")["spec"]
    assert policy["ingress"][0]["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_manifests_agree_with_the_app(layout):
    assert problems(objects(layout)) == []


def _server(objs):
    return container(the(objs, "Deployment", SERVER))


def break_probe_path(objs):
    _server(objs)["readinessProbe"]["httpGet"]["path"] = "/ready"


def break_port(objs):
    _server(objs)["ports"][0]["containerPort"] = 8080


def break_secret_key(objs):
    ref = next(e for e in _server(objs)["env"] if e["name"] == "ADMIN_TOKEN")
    ref["valueFrom"]["secretKeyRef"]["key"] = "ADMIN_PASSWORD"


def break_selector(objs):
    the(objs, "Service", "classifier")["spec"]["selector"]["app.kubernetes.io/component"] = "web"


def break_volume_name(objs):
    _server(objs)["volumeMounts"][0]["name"] = "models"


def break_setting_name(objs):
    data = the(objs, "ConfigMap", "classifier-settings")["data"]
    data["MODELS_DIR"] = data.pop("MODEL_DIR")


def break_setting_value(objs):
    the(objs, "ConfigMap", "classifier-settings")["data"]["JOB_RUNNER"] = "separate"


def route_metrics(objs):
    paths = the(objs, "Ingress", "classifier")["spec"]["rules"][0]["http"]["paths"]
    paths.append({**copy.deepcopy(paths[0]), "path": "/metrics"})


def break_ingress_limit(objs):
    annotations = the(objs, "Ingress", "classifier")["metadata"]["annotations"]
    annotations["nginx.org/client-max-body-size"] = "1m"


def break_runner_store(objs):
    container(the(objs, "Deployment", RUNNER))["volumeMounts"][0]["mountPath"] = "/srv"


BROKEN = {
    break_probe_path: "readinessProbe asks /ready, the app's route for it is /readyz",
    break_port: "containerPort [8080] but the app listens on PORT=5000",
    break_secret_key: "takes key 'ADMIN_PASSWORD' of Secret 'classifier-secrets', which "
                      "docs/kubernetes.md does not create",
    break_selector: "Service/classifier: selector",
    break_volume_name: "volumeMount 'models' has no volume",
    break_setting_name: "MODELS_DIR is not a setting",
    break_setting_value: "JOB_RUNNER='separate': use one of spawn, external",
    route_metrics: "/metrics is routed; it must stay private",
    break_ingress_limit: "nginx.org/client-max-body-size is '1m', nginx.conf has '21m'",
    break_runner_store: "the server and the runner must mount the same claim",
}


@pytest.mark.parametrize("breaks", BROKEN, ids=lambda f: f.__name__)
def test_a_broken_manifest_is_reported_by_name(breaks):
    objs = objects("base")
    breaks(objs)
    found = problems(objs)
    assert any(BROKEN[breaks] in p for p in found), found


@pytest.mark.system
def test_the_docs_walk_from_an_empty_cluster_to_a_served_model(tmp_path):
    """docs/kubernetes.md: its commands name the objects that exist, and its site overlay
    renders and validates."""
    text = DOCS.read_text("utf-8")
    objs = rendered("base")
    names = {(o["kind"].lower(), o["metadata"]["name"]) for o in objs}
    for kind, name in re.findall(r"\b(deployment|pvc|service|ingress)/([\w-]+)", text):
        kind = {"pvc": "persistentvolumeclaim"}.get(kind, kind)
        assert (kind, name) in names, f"docs/kubernetes.md names {kind}/{name}"
    for namespace in re.findall(r"kubectl (?:create namespace|-n) (\S+)", text):
        assert namespace == "offline-classifier"
    for step in ("create namespace", "create secret generic", "apply -k",
                 "rollout status", "/admin/api/models", "/activate", "/admin/api/rollback",
                 "/predict", "rollout undo"):
        assert step in text, f"docs/kubernetes.md does not show {step!r}"
    overlay = re.search(r"```yaml\n(# my-site/kustomization\.yaml\n.*?)```", text, re.S)
    assert overlay, "docs/kubernetes.md: no my-site/kustomization.yaml example"
    site = tmp_path / "my-site"  # beside the project's deploy/, as the page says
    site.mkdir()
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (site / "kustomization.yaml").write_text(overlay.group(1))
    mine = render(site)
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(site)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        theirs = [doc for doc in yaml.safe_load_all(out) if doc]
        assert sorted(json.dumps(o, sort_keys=True) for o in theirs) == \
            sorted(json.dumps(o, sort_keys=True) for o in mine)
    assert problems(copy.deepcopy(mine)) == []
    for obj in mine:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    images = {container(d)["image"] for d in find(mine, "Deployment")}
    assert images == {"registry.example.org/offline-classifier:2026-12-01"}


# --------------------------------------------------------------------------- the runner

QUICK = {"epochs": 1, "patience": 0, "image_size": 64, "strategy": "head"}


def start_watch(env: dict, log_path: Path, prefix: tuple = ()) -> subprocess.Popen:
    """``python -m webapp.jobs watch`` as its own process (the runner pod's command;
    DATA_DIR from ``env``).  Only it gets SIGTERM from the tests, as from Kubernetes."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([*prefix, sys.executable, "-m", "webapp.jobs", "watch"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def backdate(job_json: Path, seconds: float) -> None:
    job = json.loads(job_json.read_text("utf-8"))
    job["created_ts"] -= seconds
    job_json.write_text(json.dumps(job))


@pytest.mark.system
def test_the_watch_trains_what_a_server_with_an_external_runner_queued(tmp_path):
    """JOB_RUNNER=external: the server queues and never starts a training process, not
    even a minute later or after a restart; `watch` trains the job in a child, stays
    small (no torch) itself, and on SIGTERM stops the running job (failed, saying why)
    and exits."""
    http = Client(make_app(tmp_path, JOB_RUNNER="external"))
    build(http.post, "pens", {"pen": 4, "cup": 4})
    job = http.post("/admin/api/datasets/pens/train", json=QUICK).json()
    assert job["state"] == "queued"
    jobs_dir = tmp_path / "data" / ".jobs"
    backdate(jobs_dir / job["id"] / "job.json", 60)  # a spawning server would retry now
    assert http.get(f"/admin/api/jobs/{job['id']}").json()["state"] == "queued"
    restarted = make_app(tmp_path, JOB_RUNNER="external")  # and at start, when jobs wait
    assert Client(restarted).get(f"/admin/api/jobs/{job['id']}").json()["state"] == "queued"
    # Starting a training process writes runner.log first: none was ever started.
    assert not (jobs_dir / "runner.log").exists()
    assert not restarted.extensions["jobs"].runner_alive()

    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "JOB_THREADS": "1"}
    watch = start_watch(env, tmp_path / "watch.log")
    try:
        job = wait_job(http, job["id"], timeout=300)
        assert job["state"] == "done", job
        assert job["model_id"] in models_in(tmp_path) and work_files(tmp_path) == []
        assert job["runner"]["pid"] != watch.pid  # a child trained it
        log = (tmp_path / "watch.log").read_text("utf-8")
        assert f"running training job {job['id']}" in log  # in the pod's log
        assert watch.poll() is None  # still waiting for the next job
        # Idle: the watch itself never loaded torch.
        assert "libtorch" not in Path(f"/proc/{watch.pid}/maps").read_text("utf-8")

        job = http.post("/admin/api/datasets/pens/train", json=LONG).json()
        job = wait_job(http, job["id"], until=training, timeout=300)
        watch.send_signal(signal.SIGTERM)  # the pod is stopping
        assert watch.wait(timeout=120) == 0
        job = http.get(f"/admin/api/jobs/{job['id']}").json()
        assert job["state"] == "failed" and "SIGTERM" in job["error"], job
        assert pid_gone(job["runner"]["pid"])
        assert len(models_in(tmp_path)) == 1 and work_files(tmp_path) == []
    finally:
        stop(watch)


# --------------------------------------------------------------------------- the pods


class Remote:
    """A server's API shaped like the Flask test client, for testkit.teach.wait_job."""

    def __init__(self, get):
        self.get = get


def mount_namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def as_pod(objs, name: str, volume: Path, scratch: Path, secrets: dict):
    """(environment, command prefix) that run a process as a container of Deployment
    ``name`` would run: the manifests' environment, its persistent volume at ``volume``
    and its emptyDirs under ``scratch`` (paths in the environment moved along), and in a
    mount namespace where everything else is read-only (readOnlyRootFilesystem).  HOME
    and the working directory are the project, read-only, as /app is in the image."""
    deployment = the(objs, "Deployment", name)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    places = {}
    for mount in container(deployment)["volumeMounts"]:
        if "persistentVolumeClaim" in volumes[mount["name"]]:
            places[mount["mountPath"]] = volume
        else:
            places[mount["mountPath"]] = scratch / mount["name"]
            places[mount["mountPath"]].mkdir(parents=True)
    env = container_env(objs, deployment, secrets)
    for key, value in env.items():
        for path, host in places.items():
            if value == path or value.startswith(path.rstrip("/") + "/"):
                env[key] = str(host) + value[len(path):]
    env["TMPDIR"] = str(places["/tmp"])  # /tmp is an emptyDir in the pod
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env["HOME"] = str(ROOT)
    env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")})
    mounts = " && ".join(f"mount --bind {shlex.quote(str(h))} {shlex.quote(str(h))}"
                         for h in {*places.values()})
    script = f'{mounts} && mount -o remount,bind,ro / && exec "$@"'
    return env, ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")


@pytest.mark.system
@pytest.mark.skipif(not mount_namespaces_work(),
                    reason="needs mount namespaces (root and unshare) to make / read-only")
def test_the_pods_take_an_empty_volume_to_a_served_model_on_a_read_only_root(tmp_path):
    """The serving pod and the runner pod as the manifests make them (their environment,
    only their volumes writable): gunicorn serves the built-in model, a model taught on
    the Teach API is trained by the runner pod and served once activated, and the docs'
    `kubectl exec deployment/classifier-runner -- flask --app app models rollback` rolls
    it back.  Nothing is written outside the volumes: a write elsewhere would fail."""
    objs = objects("base")
    volume = tmp_path / "volume"
    volume.mkdir()
    secrets = {"ADMIN_TOKEN": TOKEN, "SECRET_KEY": "k" * 64}
    env, prefix = as_pod(objs, SERVER, volume, tmp_path / "server-pod", secrets)
    # The pod's filesystem: its volumes writable, the rest (the project too) not.
    check = f"touch {volume}/w && rm {volume}/w && ! touch {ROOT}/.written 2>/dev/null"
    assert subprocess.run([*prefix, "sh", "-c", check], timeout=60).returncode == 0
    port = free_port()
    env["GUNICORN_BIND"] = f"127.0.0.1:{port}"  # the tests listen on loopback only
    server = Server([*prefix, sys.executable, "-m", "gunicorn", "app:app"], env, port,
                    tmp_path / "server.log")
    runner_env, runner_prefix = as_pod(objs, RUNNER, volume, tmp_path / "runner-pod", secrets)
    watch = None
    http = requests.Session()
    http.headers.update(BEARER)

    def post(url, **kwargs):
        return http.post(server.url + url, timeout=120, **kwargs)

    def get(url):
        return http.get(server.url + url, timeout=60)

    def predict(image) -> dict:
        response = post("/predict", files={"image": ("x.png", encode(image, "PNG"))})
        assert response.status_code == 200, response.text
        return response.json()

    def serves(model_id: str, image) -> dict:
        """The answer for ``image`` once the pod serves ``model_id`` (it swaps on its own)."""
        deadline = time.monotonic() + 120
        while (answer := predict(image))["model"]["id"] != model_id:
            assert time.monotonic() < deadline, f"{model_id} is not served: {answer['model']}"
            time.sleep(0.2)
        return answer

    try:
        ready = server.wait_ready(timeout=600)  # the first start converts the model
        assert ready["registry"]["active"] == "builtin"  # an empty store
        cat = predict(photo("chelsea").image)
        assert cat["predictions"][0]["label"] in photo("chelsea").top1

        build(post, "shapes", {"circle": 6, "square": 6})
        response = post("/admin/api/datasets/shapes/train", json=QUICK)
        assert response.status_code == 202, response.text
        job_id = response.json()["job"]
        watch = start_watch(runner_env, tmp_path / "runner.log", runner_prefix)
        job = wait_job(Remote(get), job_id, timeout=600)
        assert job["state"] == "done", (job, (tmp_path / "runner.log").read_text("utf-8"))

        response = post(f"/admin/api/models/{job['model_id']}/activate")
        assert response.status_code == 200, response.text
        circle = serves(job["model_id"], draw("circle", random.Random(5), 160))
        assert {p["label"] for p in circle["predictions"]} == {"circle", "square"}

        rollback = subprocess.run([*runner_prefix, "flask", "--app", "app", "models",
                                   "rollback"], cwd=ROOT, env=runner_env, capture_output=True,
                                  text=True, timeout=300)
        assert rollback.returncode == 0, rollback.stderr
        cat = serves("builtin", photo("chelsea").image)
        assert cat["predictions"][0]["label"] in CAT_CLASSES

        # Everything the pods wrote is on the volume, where the settings put it.
        assert sorted(p.name for p in volume.iterdir()) == ["cache", "datasets", "models"]
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=60) == 0
        for log in (server.log, (tmp_path / "runner.log").read_text("utf-8")):
            assert "Read-only file system" not in log and "Traceback" not in log, log
    finally:
        if watch is not None:
            stop(watch)
        server.stop()
