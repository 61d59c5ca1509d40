"""The Helm chart against a real kube-apiserver: lint, schema, server-side dry run, install/upgrade/uninstall.

There is no kubelet: pods are never scheduled, so these tests assert the objects the API server holds.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clarion.models.resources import RESOURCES
from clarion_dev.cluster.launcher import ControlPlane
from clarion_dev.testing import chart
from clarion_dev.testing.chart import Helm
from clarion_dev.testing.cluster import KubeApis
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster

CHART = chart.CHART_DIR
EVERYTHING_ON = [
    "--set", "postgresql.bundled=true,redis.bundled=true,networkPolicy.enabled=true",
    "--set", "webhook.ingress.enabled=true,metrics.grafanaDashboard.enabled=true",
    "--set", "webhook.ingress.hosts={clarion.example.com}",
]
# The session's control plane already has crds/ applied by another field manager; a release in it
# leaves the CRDs and admission policies to that (test_chart_installs_and_keeps_crds checks them).
NO_CLUSTER_SCOPED_API = ["--set", "crds.enabled=false,admissionPolicies.enabled=false"]


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(chart.helm_binary(control_plane), control_plane.kubeconfig, tmp_path / "helm")


def test_helm_lint_is_clean_with_defaults_and_with_every_option(helm: Helm) -> None:
    for extra in ([], EVERYTHING_ON, ["--set", "operator.watchNamespaces={team-a,team-b}"]):
        proc = helm("lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in proc.stdout
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize(("value", "named"), [
    ("webhook.replica=3", "'replica'"),
    ("postgres.bundled=true", "'postgres'"),
    ("operator.resources.limits.gpu=1", "'gpu'"),
])
def test_an_unknown_value_key_is_refused_naming_the_key(helm: Helm, value: str, named: str) -> None:
    for command in (["lint", "--strict", str(CHART)],
                    ["template", "clarion", str(CHART), "--kube-version", "1.30.0"]):
        proc = helm(*command, "--set", value, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"helm {command[0]} accepted --set {value}"
        assert "additional properties" in output and named in output, output


def test_a_value_of_the_wrong_type_is_refused(helm: Helm) -> None:
    proc = helm("template", "clarion", str(CHART), "--kube-version", "1.30.0",
                "--set", "webhook.replicas=two", check=False)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr and "integer" in proc.stderr, proc.stderr


def test_the_api_server_accepts_everything_the_chart_renders(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    # The test Pod names the workload ServiceAccount, which the API server looks up even in a dry run.
    accounts = chart.render(control_plane, kube_namespace,
                            "--show-only", "templates/serviceaccount-workload.yaml")
    control_plane.kubectl("apply", "-f", "-", input_text=accounts)
    rendered = chart.render(control_plane, kube_namespace, *EVERYTHING_ON,
                            "--set", f"operator.watchNamespaces={{{kube_namespace}}}")
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "Deployment", "StatefulSet", "Role", "RoleBinding", "NetworkPolicy", "Ingress", "Pod"} <= kinds
    proc = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered, check=False)
    assert proc.returncode == 0, proc.stderr
    accepted = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs), proc.stdout


def _plain(k8s: KubeApis, obj: object) -> Any:
    """An API object as the JSON the API server sent (camelCase keys)."""
    return k8s.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def _secret(k8s: KubeApis, namespace: str, name: str) -> dict[str, str]:
    data = _plain(k8s, k8s.core.read_namespaced_secret(name, namespace))["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _by_name(k8s: KubeApis, listing: object) -> dict[str, Any]:
    return {item["metadata"]["name"]: item for item in _plain(k8s, listing)["items"]}


@pytest.fixture
def release(helm: Helm, kube_namespace: str) -> Iterator[str]:
    """A release name in the test namespace, uninstalled afterwards if the test left it."""
    name = chart.release_name(kube_namespace)
    yield name
    helm("uninstall", name, "-n", kube_namespace, "--ignore-not-found", check=False)


def test_helm_install_creates_the_release_and_uninstall_removes_it(
    helm: Helm, k8s: KubeApis, kube_namespace: str, release: str
) -> None:
    ns = kube_namespace
    helm("install", release, str(CHART), "-n", ns, *NO_CLUSTER_SCOPED_API, *EVERYTHING_ON)

    deployments = _by_name(k8s, k8s.apps.list_namespaced_deployment(ns))
    assert set(deployments) == {f"{release}-operator", f"{release}-webhook"}
    operator = deployments[f"{release}-operator"]["spec"]
    assert operator["replicas"] == 1 and operator["strategy"] == {"type": "Recreate"}
    assert operator["template"]["spec"]["serviceAccountName"] == f"{release}-operator"
    webhook = deployments[f"{release}-webhook"]["spec"]["template"]["spec"]
    assert webhook["automountServiceAccountToken"] is False
    assert webhook["containers"][0]["command"] == ["clarion-webhook"]

    statefulsets = _by_name(k8s, k8s.apps.list_namespaced_stateful_set(ns))
    assert set(statefulsets) == {f"{release}-postgresql", f"{release}-redis"}
    services = _by_name(k8s, k8s.core.list_namespaced_service(ns))
    assert set(services) == {f"{release}-{suffix}" for suffix in (
        "webhook", "operator-metrics", "postgresql", "redis")}
    accounts = _by_name(k8s, k8s.core.list_namespaced_service_account(ns))
    assert accounts[f"{release}-workload"]["automountServiceAccountToken"] is False
    assert accounts[f"{release}-operator"]["automountServiceAccountToken"] is True

    database = _secret(k8s, ns, f"{release}-postgresql")
    assert database["url"] == (f"postgresql://clarion:{database['password']}@{release}-postgresql.{ns}.svc:5432/"
                               "clarion")
    redis = _secret(k8s, ns, f"{release}-redis")
    assert redis["url"] == f"redis://:{redis['password']}@{release}-redis.{ns}.svc:6379/0"
    assert len(database["password"]) == 32 and database["password"] != redis["password"]

    binding = _plain(k8s, k8s.rbac.read_cluster_role_binding(f"{release}-operator"))
    assert binding["roleRef"]["name"] == f"{release}-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{release}-operator", "namespace": ns}]
    assert _plain(k8s, k8s.rbac.read_cluster_role(f"{release}-operator"))["rules"]

    # An upgrade keeps the generated passwords (the templates look up the existing Secrets).
    helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values", "--set", "webhook.replicas=3")
    assert _secret(k8s, ns, f"{release}-postgresql") == database
    assert _secret(k8s, ns, f"{release}-redis") == redis
    webhook_after = _plain(k8s, k8s.apps.read_namespaced_deployment(f"{release}-webhook", ns))
    assert webhook_after["spec"]["replicas"] == 3

    helm("uninstall", release, "-n", ns)
    assert k8s.apps.list_namespaced_deployment(ns).items == []
    with pytest.raises(ApiException) as gone:
        k8s.rbac.read_cluster_role(f"{release}-operator")
    assert gone.value.status == 404


def test_chart_installs_and_keeps_crds(tmp_path: Path, control_plane: ControlPlane) -> None:
    """On a cluster without Clarion, the release installs the CRDs and policies; uninstall keeps the CRDs."""
    with ControlPlane(workdir=tmp_path / "bare-plane", binaries=control_plane.bin_dir) as bare:
        helm = Helm(chart.helm_binary(bare), bare.kubeconfig, tmp_path / "helm")
        helm("install", "clarion", str(CHART), "-n", "clarion-system", "--create-namespace")

        def crds() -> set[str]:
            out = bare.kubectl("get", "crd", "-l", "app.kubernetes.io/instance=clarion", "-o", "name").stdout
            return set(out.split())

        # every kind the models define, NotificationRoute included
        expected = {f"customresourcedefinition.apiextensions.k8s.io/{r.crd_name}" for r in RESOURCES}
        assert crds() == expected
        policies = bare.kubectl("get", "validatingadmissionpolicies", "-o", "name").stdout.split()
        assert policies == [
            "validatingadmissionpolicy.admissionregistration.k8s.io/broadcastcampaigns.clarion.io-frozen-after-start"]
        # the CRDs serve: a channel from the examples is accepted
        example = (CHART.parents[1] / "manifests" / "examples" / "telegram-channel.yaml").read_text()
        bare.kubectl("apply", "-n", "clarion-system", "-f", "-", input_text=example)

        helm("uninstall", "clarion", "-n", "clarion-system")
        assert crds() == expected
        assert bare.kubectl("get", "validatingadmissionpolicies", "-o", "name").stdout.split() == []
        assert bare.kubectl("get", "nc", "-n", "clarion-system", "-o", "name").stdout.strip()


def test_plain_manifests_apply_crds_first_and_reapplying_changes_nothing(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    """The GitOps path on a cluster without Clarion: manifests/crds/, then manifests/install/, twice."""
    manifests = CHART.parents[1] / "manifests"
    install = manifests / "install" / "clarion.yaml"
    with ControlPlane(workdir=tmp_path / "gitops-plane", binaries=control_plane.bin_dir) as bare:
        bare.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", str(manifests / "crds"))
        bare.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        bare.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", str(install))

        def versions() -> dict[str, str]:
            """generation of objects that have one (spec changes only), else resourceVersion."""
            listing = bare.kubectl("get", "-f", str(install), "-o", "json").stdout
            items = yaml.safe_load(listing)["items"]
            return {f"{i['kind']}/{i['metadata']['name']}":
                    str(i["metadata"].get("generation") or i["metadata"]["resourceVersion"]) for i in items}

        first = versions()
        docs = [d for d in yaml.safe_load_all(install.read_text()) if d]
        expected = {f"{d['kind']}/{d['metadata']['name']}" for d in docs}
        assert set(first) == expected
        bare.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", str(install))
        assert versions() == first
