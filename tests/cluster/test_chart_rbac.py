"""The chart's operator RBAC, proven with the operator ServiceAccount's own token.

`operator_kubeconfig` applies the rendered ServiceAccount, ClusterRole(s) and bindings and authenticates
with a TokenRequest token; SelfSubjectAccessReview / SelfSubjectRulesReview then ask the API server what
that identity may do. docs/deploy.md's RBAC table is the list these tests hold the chart to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clarion.models import PLURALS
from clarion_dev.cluster.launcher import ControlPlane
from clarion_dev.testing import chart
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

pytestmark = pytest.mark.cluster

# (API group, resource[/subresource], verbs) the operator uses in every namespace it watches.
NAMESPACED_NEEDS: list[tuple[str, str, tuple[str, ...]]] = [
    *[("clarion.io", plural, ("get", "list", "watch", "patch"))
      for plural in PLURALS.values()],
    *[("clarion.io", f"{plural}/status", ("get", "patch", "update"))
      for plural in PLURALS.values()],
    *[("clarion.io", f"{plural}/finalizers", ("update",))
      for plural in PLURALS.values()],
    ("", "events", ("create",)),
    ("", "secrets", ("get", "list", "watch", "create", "update", "patch")),
    ("batch", "jobs", ("get", "list", "watch", "create", "patch", "delete")),
    ("apps", "deployments", ("get", "list", "watch", "create", "patch", "delete")),
    ("apps", "deployments/scale", ("patch",)),
    *[("keda.sh", plural, ("create", "patch", "delete"))
      for plural in ("scaledobjects", "triggerauthentications")],
    ("", "pods", ("get", "list", "watch")),
]
CLUSTER_NEEDS: list[tuple[str, str, tuple[str, ...]]] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
]
# What a compromised operator must not be able to do.
FORBIDDEN: list[tuple[str, str, str, bool]] = [  # group, resource[/sub], verb, cluster-scoped
    ("", "namespaces", "delete", True),
    ("", "nodes", "list", True),
    ("", "pods/exec", "create", False),
    ("", "pods", "create", False),
    ("", "pods", "delete", False),
    ("", "secrets", "delete", False),
    ("", "serviceaccounts/token", "create", False),
    ("", "configmaps", "list", False),
    ("rbac.authorization.k8s.io", "clusterroles", "create", True),
    ("rbac.authorization.k8s.io", "rolebindings", "create", False),
    ("apiextensions.k8s.io", "customresourcedefinitions", "update", True),
    ("clarion.io", "broadcastcampaigns", "create", False),
    ("clarion.io", "notificationchannels", "delete", False),
    ("apps", "daemonsets", "create", False),
    ("keda.sh", "clustertriggerauthentications", "create", True),
    ("keda.sh", "scaledjobs", "create", False),
]
# Every authenticated identity may ask about itself.
SELF_REVIEWS = {
    ("authentication.k8s.io", "selfsubjectreviews", "create"),
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
    ("authorization.k8s.io", "selfsubjectrulesreviews", "create"),
}


def _client(kubeconfig: Path) -> contextlib.closing[k8s_client.ApiClient]:
    api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig))
    return contextlib.closing(api)


def _plain(api: k8s_client.ApiClient, obj: object) -> Any:
    """An API object as the JSON the API server sent (camelCase keys)."""
    return api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


@pytest.fixture
def operator_api(control_plane: ControlPlane, kube_namespace: str) -> Iterator[k8s_client.ApiClient]:
    """An API client authenticated as the chart's operator ServiceAccount (cluster-wide release)."""
    with _client(chart.operator_kubeconfig(control_plane, kube_namespace)) as api:
        yield api


def _allowed(api: k8s_client.ApiClient, group: str, resource: str, verb: str, namespace: str | None) -> bool:
    plural, _, sub = resource.partition("/")
    attributes = k8s_client.V1ResourceAttributes(group=group, resource=plural, subresource=sub or None,
                                                 verb=verb, namespace=namespace)
    review = k8s_client.V1SelfSubjectAccessReview(spec=k8s_client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=attributes))
    answer = _plain(api, k8s_client.AuthorizationV1Api(api).create_self_subject_access_review(review))
    return bool(answer["status"]["allowed"])


def _rules(api: k8s_client.ApiClient, namespace: str) -> set[tuple[str, str, str]]:
    spec = k8s_client.V1SelfSubjectRulesReviewSpec(namespace=namespace)
    review = k8s_client.V1SelfSubjectRulesReview(spec=spec)
    answer = k8s_client.AuthorizationV1Api(api).create_self_subject_rules_review(review)
    status = _plain(api, answer)["status"]
    return {(group, resource, verb)
            for rule in status["resourceRules"]
            for group in rule.get("apiGroups") or [""]
            for resource in rule.get("resources") or []
            for verb in rule["verbs"]}


def _expand(needs: list[tuple[str, str, tuple[str, ...]]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in needs for verb in verbs}


def test_the_kubeconfig_authenticates_as_the_operator_service_account(
    operator_api: k8s_client.ApiClient, kube_namespace: str
) -> None:
    authn = k8s_client.AuthenticationV1Api(operator_api)
    review = _plain(operator_api, authn.create_self_subject_review(k8s_client.V1SelfSubjectReview()))
    assert review["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{kube_namespace}:{chart.operator_service_account(kube_namespace)}")


def test_operator_may_do_everything_it_needs_in_any_namespace(
    operator_api: k8s_client.ApiClient, kube_namespace: str
) -> None:
    for namespace in (kube_namespace, "default"):
        refused = [(g, r, v) for g, r, v in sorted(_expand(NAMESPACED_NEEDS))
                   if not _allowed(operator_api, g, r, v, namespace)]
        assert refused == [], f"refused in {namespace}"
    refused = [(g, r, v) for g, r, v in sorted(_expand(CLUSTER_NEEDS))
               if not _allowed(operator_api, g, r, v, None)]
    assert refused == []


def test_operator_is_refused_what_it_does_not_need(
    operator_api: k8s_client.ApiClient, kube_namespace: str
) -> None:
    granted = [(g, r, v) for g, r, v, cluster in FORBIDDEN
               if _allowed(operator_api, g, r, v, None if cluster else kube_namespace)]
    assert granted == []


def test_operator_holds_exactly_the_documented_rules(
    operator_api: k8s_client.ApiClient, kube_namespace: str
) -> None:
    held = _rules(operator_api, kube_namespace)
    assert held == _expand(NAMESPACED_NEEDS) | _expand(CLUSTER_NEEDS) | SELF_REVIEWS


def test_restricted_operator_reaches_only_its_watched_namespace(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    kubeconfig = chart.operator_kubeconfig(control_plane, kube_namespace,
                                           [f"operator.watchNamespaces={{{kube_namespace}}}"])
    with _client(kubeconfig) as api:
        refused = [n for n in sorted(_expand(NAMESPACED_NEEDS)) if not _allowed(api, *n, kube_namespace)]
        assert refused == []
        elsewhere = [n for n in sorted(_expand(NAMESPACED_NEEDS)) if _allowed(api, *n, "default")]
        assert elsewhere == []
        # cluster-wide it can only discover: CRD definitions and namespace names
        assert _allowed(api, "apiextensions.k8s.io", "customresourcedefinitions", "watch", None)
        assert _allowed(api, "", "namespaces", "list", None)
        assert not _allowed(api, "", "secrets", "list", None)
        assert not _allowed(api, "", "namespaces", "delete", None)
