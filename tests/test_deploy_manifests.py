"""The container image and the KServe manifests (Dockerfile, .dockerignore, deploy/kserve/*.yaml) checked against
the code they run, statically: no docker, no cluster, no server.

Every ``slipway serve`` command line in them is parsed by the real CLI (slipway.cli's typer app, the parser the
console script uses), so a misspelt flag or a value of the wrong type fails here; probe and scrape paths are looked
up in the route tables of slipway.serve.http; ports are compared across args, container ports, EXPOSE and the
Prometheus annotation. Each check returns problems (a list of strings), and the mutation tests below prove that
each kind of mistake is reported. The KServe rules encoded here (merged args, model-format labels, storage
prefixes, one port in Knative mode) are those of kserve/kserve's controller (pkg/apis/serving/v1beta1/
predictor_model.go, pkg/controller/v1beta1/inferenceservice/utils/utils.go); see deploy/README.md.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

try:  # typer >= 0.2x parses with its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer: click itself
    from click.exceptions import UsageError

import slipway.cli as cli
from slipway.serve.dataplane import CONTROL_MODES
from slipway.serve.http import make_app, make_metrics_app

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KSERVE = ROOT / "deploy" / "kserve"

# KServe's conventions (kserve/kserve: pkg/constants/constants.go, python/kserve/kserve/constants/constants.py,
# config/runtimes/*.yaml, docs/samples/v1beta1/custom/custom_model/custom.yaml)
MODEL_MOUNT = "/mnt/models"  # DefaultModelLocalMountPath: where the storage initializer puts storageUri
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 8081, 8082
CONTAINER_NAME = "kserve-container"  # InferenceServiceContainerName
STORAGE_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://",
                    "oci+native://", "oci+fetch://", "hf://")  # SupportedStorageURIPrefixList
PROTOCOLS = ("v1", "v2", "grpc-v1", "grpc-v2")


# ---- the real CLI ---------------------------------------------------------------------------------------------

def _root_command() -> Any:
    if not any(c.name == "serve" for c in cli.app.registered_commands):
        cli._register()  # what slipway.cli.main does before it parses
    return typer.main.get_command(cli.app)


def parse_slipway(argv: list[str]) -> dict[str, Any]:
    """``slipway ARGV`` parsed by the console script's own parser, nothing run: the serve command's parameters
    (converted to their types). Raises UsageError for what ``slipway`` would refuse (unknown command or option,
    a value of the wrong type, a missing value)."""
    root = _root_command()
    ctx = root.context_class(root, info_name="slipway")
    if not argv or root.get_command(ctx, argv[0]) is None:
        raise UsageError(f"no such command: {argv[:1]}")
    if argv[0] != "serve":
        raise UsageError(f"{argv[0]!r} is not `slipway serve`")
    command = root.get_command(ctx, "serve")
    with command.make_context("serve", list(argv[1:]), parent=ctx, resilient_parsing=False) as sub:
        return dict(sub.params)


def serve_problems(argv: list[Any]) -> tuple[list[str], dict[str, Any]]:
    """What is wrong with ``argv`` (``slipway serve ...``) as a server under KServe; its parsed parameters."""
    if not all(isinstance(a, str) for a in argv):
        return [f"non-string argument(s) {[a for a in argv if not isinstance(a, str)]} (Kubernetes wants strings)"], {}
    if argv[:1] != ["slipway"]:
        return [f"runs {argv[:1]}, not slipway"], {}
    try:
        params = parse_slipway(argv[1:])
    except UsageError as e:
        return [f"`slipway serve` rejects {argv[1:]}: {e.format_message()}"], {}
    problems = []
    ports = {k: params[k] for k in ("http_port", "grpc_port", "metrics_port")}
    for key, port in ports.items():
        if not 1 <= port <= 65535:  # 0 (any free port) and -1 (off) make no sense behind a Service
            problems.append(f"{key} {port} is not a fixed port")
    if len(set(ports.values())) != 3:
        problems.append(f"ports collide: {ports}")
    if str(params["repository"]) != MODEL_MOUNT:
        problems.append(f"serves {params['repository']}, not KServe's model mount {MODEL_MOUNT}")
    if params["host"] != "0.0.0.0":
        problems.append(f"binds {params['host']}: unreachable from outside the container")
    if params["control"] not in CONTROL_MODES:
        problems.append(f"--model-control-mode {params['control']} is not one of {CONTROL_MODES}")
    if params["print_config"]:
        problems.append("--print-config prints and exits")
    return problems, params


# ---- the server's routes --------------------------------------------------------------------------------------

def _get_paths(app: Any) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET"}


HTTP_GET = _get_paths(make_app(object(), metrics=lambda: (b"", "text/plain")))  # type: ignore[arg-type]
METRICS_GET = _get_paths(make_metrics_app(lambda: (b"", "text/plain")))


# ---- Dockerfile -----------------------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def exec_form(value: str) -> list[str]:
    form = json.loads(value)  # exec (JSON) form: slipway is PID 1 and gets SIGTERM, no shell in between
    assert isinstance(form, list) and all(isinstance(a, str) for a in form), value
    return form


def dockerfile_problems(text: str) -> list[str]:
    ins = instructions(text)
    last = {}
    for word, rest in ins:
        last[word] = rest  # the last one counts (runtime stage)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args.setdefault(key, value.strip('"'))
    problems = []
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
             for word, rest in ins if word == "FROM"]
    if not bases or any(b.split("@")[0] != "python:3.11-slim" for b in bases):
        problems.append(f"base images {bases}: want python:3.11-slim")
    try:
        argv = exec_form(last.get("ENTRYPOINT", "[]")) + exec_form(last.get("CMD", "[]"))
    except (ValueError, AssertionError) as e:
        return [*problems, f"ENTRYPOINT/CMD not in exec form: {e}"]
    found, params = serve_problems(argv)
    problems += [f"CMD: {p}" for p in found]
    if not params:
        return problems
    ports = {params["http_port"], params["grpc_port"], params["metrics_port"]}
    if (params["http_port"], params["grpc_port"]) != (HTTP_PORT, GRPC_PORT):
        problems.append(f"CMD ports http {params['http_port']}, grpc {params['grpc_port']}: KServe's are "
                        f"{HTTP_PORT}, {GRPC_PORT}")
    exposed = {int(p.split("/")[0]) for word, rest in ins if word == "EXPOSE" for p in rest.split()}
    if exposed != ports:
        problems.append(f"EXPOSE {sorted(exposed)} != the CMD's ports {sorted(ports)}")
    health = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", last.get("HEALTHCHECK", ""))
    urls = re.findall(r"https?://[^\s'\"]+", health.group(1)) if health else []
    if len(urls) != 1:
        problems.append(f"HEALTHCHECK: want one URL, got {urls}")
    else:
        url = urlsplit(urls[0])
        if url.port != params["http_port"] or url.path != "/v2/health/ready" or url.path not in HTTP_GET:
            problems.append(f"HEALTHCHECK {urls[0]}: not GET /v2/health/ready on the HTTP port {params['http_port']}")
    user = last.get("USER", "root").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.append(f"USER {user}: want a numeric non-root uid (runAsNonRoot can only verify a number)")
    return problems


def dockerfile_uid() -> int:
    return int(dict(instructions(DOCKERFILE.read_text()))["USER"].split(":")[0])


# ---- .dockerignore --------------------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for line in rules.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            result = not negate
    return result


# ---- KServe manifests -----------------------------------------------------------------------------------------

def load_all() -> list[dict[str, Any]]:
    docs = [d for f in sorted(KSERVE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert docs, f"no manifests in {KSERVE}"
    return docs


def the_runtime(docs: list[dict[str, Any]]) -> dict[str, Any]:
    runtimes = [d for d in docs if d["kind"] in ("ServingRuntime", "ClusterServingRuntime")]
    assert len(runtimes) == 1, [d["kind"] for d in docs]
    return runtimes[0]


def the_services(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "InferenceService"]


def _container(runtime: dict[str, Any]) -> dict[str, Any]:
    containers = [c for c in runtime["spec"]["containers"] if c.get("name") == CONTAINER_NAME]
    return containers[0] if len(containers) == 1 else {}


def _probe_problems(container: dict[str, Any], http_port: int) -> list[str]:
    problems = []
    for probe, want in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        path, port = get.get("path"), get.get("port")
        if path != want or path not in HTTP_GET:
            problems.append(f"{probe} path {path}: want {want}, served {path in HTTP_GET}")
        if port != http_port:
            problems.append(f"{probe} port {port} != --http-port {http_port}")
    return problems


def runtime_problems(runtime: dict[str, Any]) -> list[str]:
    problems = []
    if runtime.get("apiVersion") != "serving.kserve.io/v1alpha1" or runtime["metadata"].get("name") != "slipway":
        problems.append(f"{runtime.get('apiVersion')} {runtime['metadata'].get('name')}: want "
                        "serving.kserve.io/v1alpha1 named slipway")
    spec = runtime["spec"]
    if not {"v2", "grpc-v2"} <= set(spec.get("protocolVersions", [])):
        problems.append(f"protocolVersions {spec.get('protocolVersions')}: want v2 and grpc-v2")
    formats = {f["name"] for f in spec.get("supportedModelFormats", [])}
    if not {"onnx", "triton"} <= formats:
        problems.append(f"supportedModelFormats {sorted(formats)}: want onnx and triton")
    container = _container(runtime)
    if not container:
        return [*problems, f"no single container named {CONTAINER_NAME}"]
    if not container.get("image"):
        problems.append("no image")
    found, params = serve_problems(list(container.get("command", ["slipway"])) + list(container.get("args", [])))
    problems += found
    if not params:
        return problems
    if (params["http_port"], params["grpc_port"], params["metrics_port"]) != (HTTP_PORT, GRPC_PORT, METRICS_PORT):
        problems.append(f"ports {params['http_port']}, {params['grpc_port']}, {params['metrics_port']}: want "
                        f"{HTTP_PORT}, {GRPC_PORT}, {METRICS_PORT}")
    problems += _probe_problems(container, params["http_port"])
    notes = spec.get("annotations", {})
    if notes.get("prometheus.kserve.io/port") != str(params["metrics_port"]):
        problems.append(f"prometheus.kserve.io/port {notes.get('prometheus.kserve.io/port')!r} != "
                        f"--metrics-port {params['metrics_port']}")
    if notes.get("prometheus.kserve.io/path") not in METRICS_GET:
        problems.append(f"prometheus.kserve.io/path {notes.get('prometheus.kserve.io/path')!r} is not served "
                        f"on the metrics port ({sorted(METRICS_GET)})")
    security = container.get("securityContext", {})
    if not security.get("runAsNonRoot") or security.get("runAsUser") != dockerfile_uid():
        problems.append(f"securityContext {security}: want runAsNonRoot and the image's uid {dockerfile_uid()}")
    resources = container.get("resources", {})
    if not resources.get("requests") or not resources.get("limits"):
        problems.append(f"resources {resources}: want requests and limits")
    return problems


def _format_label(model: dict[str, Any]) -> str:
    fmt = model.get("modelFormat", {})
    return "mt:" + fmt.get("name", "") + (f":{fmt['version']}" if fmt.get("version") else "")


def service_problems(isvc: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """An InferenceService against the runtime, the way KServe's controller combines them."""
    problems = []
    if isvc.get("apiVersion") != "serving.kserve.io/v1beta1":
        problems.append(f"apiVersion {isvc.get('apiVersion')}")
    model = isvc["spec"]["predictor"].get("model", {})
    spec = runtime["spec"]
    if model.get("runtime") != runtime["metadata"]["name"]:
        problems.append(f"runtime {model.get('runtime')!r} is not {runtime['metadata']['name']!r}")
    # RuntimeSupportsModel with the runtime named: every supported format counts, version-qualified or not
    offered = set()
    for f in spec.get("supportedModelFormats", []):
        offered.add("mt:" + f["name"])
        if f.get("version"):
            offered.add(f"mt:{f['name']}:{f['version']}")
    label = _format_label(model)
    if label not in offered:
        problems.append(f"modelFormat {label} is not among the runtime's {sorted(offered)}")
    protocol = model.get("protocolVersion", "v1")
    if protocol not in PROTOCOLS or protocol not in spec.get("protocolVersions", []):
        problems.append(f"protocolVersion {protocol} not offered by the runtime {spec.get('protocolVersions')}")
    uri = model.get("storageUri", "")
    if not uri.startswith(STORAGE_PREFIXES):
        problems.append(f"storageUri {uri!r}: not a KServe storage URI")
    # MergeRuntimeContainers: the InferenceService's args extend the runtime's; its ports merge in
    container = _container(runtime)
    found, params = serve_problems(list(container.get("command", ["slipway"])) + list(container.get("args", []))
                                   + list(model.get("args", [])))
    problems += [f"merged args: {p}" for p in found]
    if not params:
        return problems
    ports = list(container.get("ports", [])) + list(model.get("ports", []))
    if len(ports) > 1:  # Knative (serverless mode, KServe's default install) serves one container port
        problems.append(f"{len(ports)} container ports: Knative mode allows one")
    for port in ports or [{"name": "http1", "containerPort": HTTP_PORT}]:  # none declared: KServe's 8080
        grpc = "h2c" in port.get("name", "") or "grpc" in port.get("name", "")  # KServe's isGrpcPort
        want = params["grpc_port"] if grpc else params["http_port"]
        if port.get("containerPort") != want:
            problems.append(f"port {port.get('name')} {port.get('containerPort')} != --{'grpc' if grpc else 'http'}"
                            f"-port {want}")
        if grpc != protocol.startswith("grpc"):
            problems.append(f"port {port.get('name')} does not fit protocolVersion {protocol}")
    return problems


# ---- the tests ------------------------------------------------------------------------------------------------

def test_parser_is_the_real_cli_and_refuses_what_serve_refuses() -> None:
    assert parse_slipway(["serve", "/m", "--http-port", "9", "--model-control-mode", "poll"])["http_port"] == 9
    for bad in (["serve", "/m", "--http-prot", "8080"],  # unknown flag
                ["serve", "/m", "--http_port", "8080"],  # Triton / KServe's python spelling
                ["serve", "/m", "--http-port", "eighty"],  # wrong type
                ["serve", "/m", "--grpc-port"],  # missing value
                ["serve"],  # missing repository
                ["serv", "/m"]):  # no such command
        with pytest.raises(UsageError):
            parse_slipway(bad)


def test_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("old,new,expected", [
    ('"--grpc-port", "8081"', '"--grpc-prot", "8081"', "rejects"),
    ('"--grpc-port", "8081"', '"--grpc-port", "grpc"', "rejects"),
    ('"--http-port", "8080"', '"--http-port", "8000"', "EXPOSE"),
    ("EXPOSE 8080 8081 8082", "EXPOSE 8080 8081", "EXPOSE"),
    ("/v2/health/ready'", "/v2/health/readyz'", "HEALTHCHECK"),
    ("USER 1000:1000", "USER slipway", "USER"),
    ('"0.0.0.0"', '"127.0.0.1"', "binds"),
    ('ENTRYPOINT ["slipway"]', "ENTRYPOINT slipway", "exec form"),
])
def test_dockerfile_mistakes_are_reported(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    assert any(expected in p for p in dockerfile_problems(text.replace(old, new, 1)))


def test_image_installs_serving_dependencies_only() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = DOCKERFILE.read_text()
    args = dict(rest.partition("=")[::2] for word, rest in instructions(text) if word == "ARG")
    assert args.get("EXTRAS", "x").strip('"') == ""  # the core dependencies unless asked
    allowed = re.search(r'case "\$extra" in ([\w|]+)\)', text)
    assert allowed and set(allowed.group(1).split("|")) == {"openvino", "edge"}
    assert set(allowed.group(1).split("|")) <= set(project["optional-dependencies"])
    assert not any(re.match(r"(torch|pytest|ruff)\b", d) for d in project["dependencies"])
    # served pipelines (slipway_pipeline models, slipway.backends.pipeline) read pipeline.yaml with pyyaml
    assert any(re.match(r"pyyaml\b", d, re.I) for d in project["dependencies"]) or '"pyyaml>=6"' in text
    # everything the Dockerfile copies from the context is in it
    rules = DOCKERIGNORE.read_text()
    for word, rest in instructions(text):
        if word == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists() and not ignored(src, rules), src


@pytest.mark.parametrize("path,out", [
    (".venv/bin/python", True), (".git/HEAD", True), (".pytest_cache/v/cache", True), (".ruff_cache/x", True),
    ("bench/results/serve.md", True), ("demo_out/page.png", True), ("tests/test_model.py", True),
    ("slipway/serve/__pycache__/http.cpython-311.pyc", True), ("slipway.egg-info/PKG-INFO", True),
    ("model.onnx", True), ("pyproject.toml", False), ("README.md", False), ("slipway/serve/http.py", False),
    ("slipway/serve/openapi.json", False), ("slipway/page.html", False),
])
def test_dockerignore(path: str, out: bool) -> None:
    assert ignored(path, DOCKERIGNORE.read_text()) is out


def test_servingruntime() -> None:
    assert runtime_problems(the_runtime(load_all())) == []


def _set_arg(runtime: dict[str, Any], flag: str, value: str | None = None, rename: str | None = None) -> None:
    args = _container(runtime)["args"]
    i = args.index(flag)
    if rename:
        args[i] = rename
    if value is not None:
        args[i + 1] = value


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: _set_arg(r, "--http-port", rename="--http_port"), "rejects"),
    (lambda r: _set_arg(r, "--metrics-port", value="metrics"), "rejects"),
    (lambda r: _set_arg(r, "--grpc-port", value="9000"), "want 8080, 8081, 8082"),
    (lambda r: _set_arg(r, "--metrics-port", value="9090"), "prometheus.kserve.io/port"),
    (lambda r: _set_arg(r, "--model-control-mode", value="auto"), "--model-control-mode"),
    (lambda r: _set_arg(r, "/mnt/models", rename="/models"), "model mount"),
    (lambda r: _container(r)["args"].append("8080"), "rejects"),  # a stray value
    (lambda r: _container(r)["args"].__setitem__(_container(r)["args"].index("--http-port") + 1, 8080), "string"),
    (lambda r: _container(r)["readinessProbe"]["httpGet"].update(path="/healthz"), "readinessProbe path"),
    (lambda r: _container(r)["livenessProbe"]["httpGet"].update(port=8081), "livenessProbe port"),
    (lambda r: r["spec"]["annotations"].update({"prometheus.kserve.io/path": "/v2/metrics"}), "prometheus.kserve.io/path"),
    (lambda r: r["spec"]["protocolVersions"].remove("grpc-v2"), "protocolVersions"),
    (lambda r: _container(r).update(name="slipway"), CONTAINER_NAME),
    (lambda r: _container(r)["securityContext"].update(runAsUser=0), "securityContext"),
])
def test_servingruntime_mistakes_are_reported(mutate: Any, expected: str) -> None:
    runtime = copy.deepcopy(the_runtime(load_all()))
    mutate(runtime)
    assert any(expected in p for p in runtime_problems(runtime)), runtime_problems(runtime)


def test_inferenceservices() -> None:
    docs = load_all()
    runtime, services = the_runtime(docs), the_services(docs)
    for isvc in services:
        assert service_problems(isvc, runtime) == [], isvc["metadata"]["name"]
    kinds = {(s["spec"]["predictor"]["model"]["protocolVersion"],
              tuple(p["name"] for p in s["spec"]["predictor"]["model"].get("ports", []))) for s in services}
    assert ("v2", ("http1",)) in kinds and ("grpc-v2", ("h2c",)) in kinds  # a REST and a gRPC variant


def _grpc_service() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = load_all()
    isvc = next(s for s in the_services(docs) if s["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2")
    return copy.deepcopy(isvc), copy.deepcopy(the_runtime(docs))


@pytest.mark.parametrize("mutate,expected", [
    (lambda s, r: s["spec"]["predictor"]["model"]["ports"][0].update(containerPort=9000), "--grpc-port 8081"),
    (lambda s, r: s["spec"]["predictor"]["model"]["ports"][0].update(name="http1"), "--http-port 8080"),
    (lambda s, r: s["spec"]["predictor"]["model"].update(runtime="kserve-tritonserver"), "runtime"),
    (lambda s, r: s["spec"]["predictor"]["model"]["modelFormat"].update(name="pytorch"), "modelFormat"),
    (lambda s, r: s["spec"]["predictor"]["model"]["modelFormat"].update(version="1"), "modelFormat"),
    (lambda s, r: s["spec"]["predictor"]["model"].update(protocolVersion="grpc-v1"), "protocolVersion"),
    (lambda s, r: s["spec"]["predictor"]["model"].update(storageUri="bucket/repo"), "storageUri"),
    (lambda s, r: s["spec"]["predictor"]["model"].update(args=["--max-pending=x"]), "merged args"),
    (lambda s, r: _container(r).update(ports=[{"name": "http1", "containerPort": 8080}]), "Knative"),
])
def test_inferenceservice_mistakes_are_reported(mutate: Any, expected: str) -> None:
    isvc, runtime = _grpc_service()
    mutate(isvc, runtime)
    assert any(expected in p for p in service_problems(isvc, runtime)), service_problems(isvc, runtime)
