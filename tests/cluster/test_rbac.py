"""RBAC is enforced: a ServiceAccount bound to a Role can do exactly what the Role allows, checked with
the ServiceAccount's own token (TokenRequest API) on a fresh client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from clarion_dev.cluster import ControlPlane
from clarion_dev.testing.cluster import KubeApis, model
from clarion_dev.testing.waiting import wait_for
from kubernetes import client
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster





@contextmanager
def client_for_token(control_plane: ControlPlane, token: str) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_cert)
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    with client.ApiClient(configuration) as api:
        yield api


def token_for(k8s: KubeApis, namespace: str, service_account: str) -> str:
    request = model(client.AuthenticationV1TokenRequest, {"spec": {"expirationSeconds": 600}})
    response = k8s.core.create_namespaced_service_account_token(service_account, namespace, request)
    assert response.status is not None
    return str(response.status.token)


def status_of(call: Callable[[], object]) -> int:
    """200 when the call succeeds, else the HTTP status it failed with."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status or 0)
    return 200


@pytest.fixture
def reader(k8s: KubeApis, kube_namespace: str) -> str:
    """ServiceAccount `reader` bound to a Role allowing get/list on ConfigMaps in the test namespace."""
    k8s.core.create_namespaced_service_account(
        kube_namespace, model(client.V1ServiceAccount, {"metadata": {"name": "reader"}})
    )
    k8s.rbac.create_namespaced_role(kube_namespace, model(client.V1Role, {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }))
    k8s.rbac.create_namespaced_role_binding(kube_namespace, model(client.V1RoleBinding, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": kube_namespace}],
    }))
    k8s.core.create_namespaced_config_map(
        kube_namespace, model(client.V1ConfigMap, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    )
    return "reader"


def test_service_account_token_can_do_exactly_what_its_role_allows(
    control_plane: ControlPlane, k8s: KubeApis, kube_namespace: str, reader: str
) -> None:
    token = token_for(k8s, kube_namespace, reader)
    new_cm = model(client.V1ConfigMap, {"metadata": {"name": "intruder"}})

    with client_for_token(control_plane, token) as api:
        core = client.CoreV1Api(api)
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            model(client.V1SelfSubjectReview, {})
        )
        allowed = {
            "list configmaps": status_of(lambda: core.list_namespaced_config_map(kube_namespace)),
            "get configmap": status_of(lambda: core.read_namespaced_config_map("settings", kube_namespace)),
        }
        denied = {
            "create configmap": status_of(lambda: core.create_namespaced_config_map(kube_namespace, new_cm)),
            "delete configmap": status_of(
                lambda: core.delete_namespaced_config_map("settings", kube_namespace)
            ),
            "list secrets": status_of(lambda: core.list_namespaced_secret(kube_namespace)),
            "list configmaps elsewhere": status_of(lambda: core.list_namespaced_config_map("default")),
            "list namespaces": status_of(lambda: core.list_namespace()),
        }

    assert review.status is not None and review.status.user_info is not None
    assert review.status.user_info.username == f"system:serviceaccount:{kube_namespace}:{reader}"
    assert allowed == dict.fromkeys(allowed, 200)
    assert denied == dict.fromkeys(denied, 403)
    assert k8s.core.read_namespaced_config_map("settings", kube_namespace).data == {"a": "1"}


def test_removing_the_role_binding_revokes_access_for_the_same_token(
    control_plane: ControlPlane, k8s: KubeApis, kube_namespace: str, reader: str
) -> None:
    token = token_for(k8s, kube_namespace, reader)
    with client_for_token(control_plane, token) as api:
        core = client.CoreV1Api(api)
        assert status_of(lambda: core.list_namespaced_config_map(kube_namespace)) == 200

        k8s.rbac.delete_namespaced_role_binding("reader", kube_namespace)

        wait_for(
            lambda: status_of(lambda: core.list_namespaced_config_map(kube_namespace)) == 403,
            what="the revoked binding to take effect",
        )


def test_a_token_for_a_deleted_service_account_is_rejected(
    control_plane: ControlPlane, k8s: KubeApis, kube_namespace: str, reader: str
) -> None:
    token = token_for(k8s, kube_namespace, reader)
    k8s.core.delete_namespaced_service_account(reader, kube_namespace)

    with client_for_token(control_plane, token) as api:
        core = client.CoreV1Api(api)
        wait_for(
            lambda: status_of(lambda: core.list_namespaced_config_map(kube_namespace)) == 401,
            what="the token of the deleted ServiceAccount to be refused",
        )
