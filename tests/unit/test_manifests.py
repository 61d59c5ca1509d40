"""manifests/ and the chart's generated templates stay in step with crds/ and the chart; the chart's
values are documented and closed; what the chart renders follows the security and labelling rules.

Rendering needs the helm binary (scripts/build-k8s.sh, run here when Go is installed: it waits for a
build under way): without it these tests fail in CI and are skipped elsewhere; the checks on
values.yaml and values.schema.json need nothing. Marked `helm`, they run after the integration tier.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from clarion.models import ScalingPolicy
from clarion_dev import render_manifests as rm
from clarion_operator.settings import OperatorSettings
from prometheus_client import REGISTRY

pytestmark = [pytest.mark.unit, pytest.mark.helm]

CHART = rm.CHART_DIR
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Every optional part switched on, so each template renders at least once.
EVERYTHING_ON = [
    "--set", "postgresql.bundled=true,redis.bundled=true,networkPolicy.enabled=true",
    "--set", "webhook.ingress.enabled=true,metrics.grafanaDashboard.enabled=true",
    "--set", "webhook.ingress.hosts={clarion.example.com}",
    "--api-versions", "monitoring.coreos.com/v1",
]


@pytest.fixture(scope="module")
def helm() -> Path:
    found = rm.find_helm(build=True)
    if found is None:
        message = "helm is not built on this machine (bash scripts/build-k8s.sh builds it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _sources(text: str) -> dict[str, list[dict[str, Any]]]:
    """Rendered objects grouped by the template file helm says they came from."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        match = re.search(r"^# Source: (\S+)", chunk, flags=re.MULTILINE)
        doc = yaml.safe_load(chunk)
        if match and doc:
            grouped[match.group(1)].append(doc)
    return grouped


def test_generated_templates_and_manifests_match_crds_and_the_chart(helm: Path) -> None:
    problems = rm.drift(rm.render(helm), rm.generated_dirs())
    assert problems == [], "run `make manifests` and commit:\n" + "\n".join(problems)


def test_manifest_crds_are_the_crds_directory_unchanged() -> None:
    copies = sorted((rm.MANIFESTS_DIR / "crds").glob("*.yaml"))
    assert copies, "manifests/crds/ is empty"
    for copy in copies:
        assert copy.read_text() == (rm.CRDS_DIR / copy.name).read_text()
    kinds = {doc["kind"] for copy in copies for doc in _documents(copy.read_text())}
    assert kinds == {"CustomResourceDefinition"}


def test_plain_install_manifest_has_no_crds_and_needs_only_the_two_connection_secrets() -> None:
    docs = _documents((rm.MANIFESTS_DIR / rm.INSTALL_FILE).read_text())
    namespace = {"name": "clarion-system", "labels": {"app.kubernetes.io/part-of": "clarion"}}
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": namespace}
    kinds = {doc["kind"] for doc in docs}
    assert "CustomResourceDefinition" not in kinds and "Secret" not in kinds and "Pod" not in kinds
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    secret_refs = {
        (ref["name"], ref["key"])
        for doc in docs if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if (ref := env.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert secret_refs == {("clarion-database", "url"), ("clarion-redis", "url")}
    assert all(doc["metadata"].get("namespace") in (None, "clarion-system") for doc in docs)


def _walk_schema(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            problems.append(path or "/")
        for key, child in node.items():
            _walk_schema(child, f"{path}/{key}", problems)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            _walk_schema(child, f"{path}/{index}", problems)


def test_values_schema_closes_every_object_it_describes() -> None:
    problems: list[str] = []
    _walk_schema(SCHEMA, "", problems)
    assert problems == [], f"objects without additionalProperties: false: {problems}"


def _schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    keys: set[str] = set()
    for key, child in node.get("properties", {}).items():
        keys.add(prefix + key)
        keys |= _schema_keys(child, f"{prefix}{key}.")
    return keys


def _value_keys(node: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, child in node.items():
            keys.add(prefix + key)
            keys |= _value_keys(child, f"{prefix}{key}.")
    return keys


def test_values_yaml_and_schema_describe_the_same_keys() -> None:
    in_values = _value_keys(VALUES)
    in_schema = _schema_keys(SCHEMA)
    # free-form maps (labels, annotations, resources, security contexts) may hold keys the schema
    # describes in $defs rather than by name; chart-own keys must match exactly both ways.
    unknown = {k for k in in_values - in_schema if not _under_open_map(k)}
    assert unknown == set(), "keys in values.yaml the schema does not know"
    chart_own = {k for k in in_schema if k.split(".")[0] != "global"}
    missing = {k for k in chart_own - in_values
               if not any(k.startswith(f"{free}.") for free in _free_form_roots())}
    assert missing == set(), "keys in the schema that values.yaml does not set or document"


def _under_open_map(key: str) -> bool:
    """Whether `key` lies under a map whose keys are free (labels, annotations, node selectors)."""
    node: dict[str, Any] = SCHEMA
    for part in key.split(".")[:-1]:
        if "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if isinstance(node.get("additionalProperties"), dict):
            return True
        node = node.get("properties", {}).get(part, {})
    if "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return isinstance(node.get("additionalProperties"), dict)


def _free_form_roots() -> set[str]:
    """Value paths whose schema is a shared Kubernetes type: their sub-keys are optional."""
    roots: set[str] = set()

    def visit(node: dict[str, Any], prefix: str) -> None:
        for key, child in node.get("properties", {}).items():
            if "$ref" in child:
                roots.add(prefix + key)
            else:
                visit(child, f"{prefix}{key}.")

    visit(SCHEMA, "")
    return roots


def test_every_value_is_documented_by_a_comment() -> None:
    """Each key, or the mapping that holds it, has a `#` comment on the line above."""
    undocumented: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the open mappings
    previous = ""
    for line in VALUES_TEXT.splitlines():
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or any(doc for _, doc in stack)
            is_leaf = line.split(":", 1)[1].strip() != ""
            if is_leaf and not documented:
                undocumented.append(line.strip())
            if not is_leaf:
                stack.append((indent, previous.lstrip().startswith("#")))
        if line.strip():
            previous = line
    assert undocumented == []


def test_each_template_file_renders_one_kind_of_object(helm: Path) -> None:
    rendered = rm.helm_template(helm, CHART, *EVERYTHING_ON, "--set", "operator.watchNamespaces={a,b}")
    for source, docs in _sources(rendered).items():
        kinds = {doc["kind"] for doc in docs}
        assert len(kinds) == 1, f"{source} renders {sorted(kinds)}"
        if len(docs) > 1:  # only the per-namespace RBAC repeats
            assert kinds <= {"Role", "RoleBinding"}, source


def test_every_object_carries_the_standard_labels(helm: Path) -> None:
    rendered = rm.helm_template(helm, CHART, *EVERYTHING_ON)
    for doc in _documents(rendered):
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc["spec"]))
    return specs


def test_every_pod_is_locked_down(helm: Path) -> None:
    docs = _documents(rm.helm_template(helm, CHART, *EVERYTHING_ON))
    specs = _pod_specs(docs)
    assert len(specs) == 5  # operator, webhook, postgresql, redis, helm test
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is name.endswith("-operator"), name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in container["resources"], name
            assert ":latest" not in container["image"], name


def test_operator_runs_once_with_recreate_and_kopf_liveness(helm: Path) -> None:
    docs = _documents(rm.helm_template(helm, CHART))
    (operator,) = [d for d in docs
                   if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = operator["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLARION_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env["CLARION_IMAGE"] == "ghcr.io/clarion/clarion:0.1.0"
    assert env["CLARION_NAMESPACES"] == ""
    assert env["CLARION_LOG_FORMAT"] == "json"


def test_worker_autoscaling_values_reach_the_operator_as_its_cluster_defaults(
        helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _documents(rm.helm_template(
        helm, CHART, "--set", "operator.workerAutoscaling.maxReplicas=4",
        "--set", "operator.workerAutoscaling.lanes.bulk.targetLagPerReplica=1000"))
    (operator,) = [d for d in docs
                   if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    monkeypatch.setenv("CLARION_WORKER_AUTOSCALING", env["CLARION_WORKER_AUTOSCALING"])
    cluster = OperatorSettings().worker_autoscaling
    assert cluster.policy("bulk") == ScalingPolicy(max_replicas=4, target_lag_per_replica=1000)
    assert cluster.policy("instant") == ScalingPolicy(max_replicas=4)


def test_worker_autoscaling_values_schema_is_the_crds_own() -> None:
    """The chart's schema of operator.workerAutoscaling allows what spec.workers.autoscaling allows."""
    crd = yaml.safe_load((rm.ROOT / "crds" / "clarion.io_notificationchannels.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    kept = ("type", "enum", "minimum", "maximum", "properties")

    def shape(node: dict[str, Any]) -> dict[str, Any]:
        found = {k: v for k, v in node.items() if k in kept}
        if "properties" in found:
            found["properties"] = {k: shape(v) for k, v in found["properties"].items()}
        return found

    assert shape(SCHEMA["$defs"]["workerAutoscaling"]) == shape(
        spec["properties"]["workers"]["properties"]["autoscaling"])


def test_monitoring_objects_render_only_when_the_cluster_serves_their_api(helm: Path) -> None:
    without = {d["kind"] for d in _documents(rm.helm_template(helm, CHART))}
    with_api = {d["kind"] for d in _documents(rm.helm_template(helm, CHART, "--api-versions",
                                                                "monitoring.coreos.com/v1"))}
    monitoring = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not without & monitoring
    assert monitoring <= with_api


def test_dashboard_is_valid_grafana_json(helm: Path) -> None:
    docs = _documents(rm.helm_template(helm, CHART, "--set", "metrics.grafanaDashboard.enabled=true"))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["clarion.json"])
    assert dashboard["uid"] == "clarion-overview"
    assert all(panel["targets"][0]["expr"] for panel in dashboard["panels"])


# The import packages of every Clarion process: each declares its metrics at module level.
PROCESS_PACKAGES = ("clarion", "clarion_webhook", "clarion_senders", "clarion_bot", "clarion_operator")
# Series Prometheus records itself for each target, and the labels it adds to every scraped series
# (ServiceMonitor and PodMonitor targets).
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint", "job", "instance"}
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
                   "summary": ("", "_count", "_sum"), "info": ("_info",)}


def _exported_series() -> dict[str, set[str]]:
    """Sample name -> label names of every metric the Clarion processes register, after importing each
    of their modules (so a metric renamed in the code is missing here)."""
    for top in PROCESS_PACKAGES:
        package = importlib.import_module(top)
        for module in pkgutil.walk_packages(package.__path__, f"{top}."):
            importlib.import_module(module.name)
    exported: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        collector = REGISTRY._names_to_collectors.get(family.name) or REGISTRY._names_to_collectors.get(
            f"{family.name}_total")
        labels = set(getattr(collector, "_labelnames", ()))
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            exported[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return exported


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable of the Grafana dashboard."""
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"dashboard panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(series, label): the series is PromQL, the label one of its labels.
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
            assert found, f"dashboard variable {variable['name']}: unexpected query {variable['query']!r}"
            yield f"dashboard variable {variable['name']!r}", f"{found[1]}{{{found[2]}!=\"\"}}"


def _alert_queries(helm: Path) -> Iterator[tuple[str, str]]:
    docs = _documents(rm.helm_template(helm, CHART, "--api-versions", "monitoring.coreos.com/v1"))
    (rules,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def _selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_every_metric_the_dashboard_and_alerts_use_is_exported_by_a_clarion_process(helm: Path) -> None:
    exported = _exported_series()
    problems: list[str] = []
    queries = [*_dashboard_queries(), *_alert_queries(helm)]
    assert len(queries) >= 10
    for where, expr in queries:
        for selector in _selectors(expr):
            name = selector.name
            if name is None:
                problems.append(f"{where}: a selector without a metric name: {expr}")
            elif name in PROMETHEUS_SERIES:
                continue
            elif name not in exported:
                problems.append(f"{where}: no Clarion process exports {name}")
            else:
                matched = {m.name for m in selector.matchers.matchers}
                unknown = matched - exported[name] - TARGET_LABELS
                if unknown:
                    problems.append(f"{where}: {name} has no label {sorted(unknown)}")
    assert problems == [], "\n".join(problems)


def test_restricting_namespaces_swaps_the_cluster_grant_for_roles(helm: Path) -> None:
    docs = _documents(rm.helm_template(helm, CHART, "--set", "operator.watchNamespaces={team-a,team-b}"))
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in cluster_role["rules"])
    roles = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    assert roles == bindings == {"team-a", "team-b"}
    (operator,) = [d for d in docs
                   if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CLARION_NAMESPACES"] == "team-a,team-b"


def test_object_names_stay_valid_for_the_longest_release_name(helm: Path) -> None:
    release = "r" * 53  # the longest name helm accepts
    docs = _documents(rm.helm_template(helm, CHART, *EVERYTHING_ON, release=release))
    for doc in docs:
        name = doc["metadata"]["name"]
        limit = 52 if doc["kind"] == "StatefulSet" else 63  # pods "<name>-0", revisions "<name>-<hash>"
        assert len(name) <= limit, f"{doc['kind']} {name}"
