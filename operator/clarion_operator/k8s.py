"""The one module that talks to the Kubernetes API (besides kopf itself, which writes status and Events).

Calls use the official client in worker threads and exchange plain dicts. Creates tolerate 409 (the
object already exists: a handler ran twice), reads return None for 404. Objects of other projects'
APIs (KEDA's) are written by server-side apply with strict field validation: a field the installed
CRD does not know is an error, not silently pruned.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

import kubernetes
from clarion.models import GROUP, VERSION
from kubernetes.client.exceptions import ApiException


def load_client() -> kubernetes.client.ApiClient:
    """An API client from the in-cluster service account, else from KUBECONFIG."""
    configuration = kubernetes.client.Configuration()
    loaders: Any = kubernetes.config
    try:
        loaders.load_incluster_config(client_configuration=configuration)
    except loaders.ConfigException:
        loaders.load_kube_config(client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


#: The field manager of the operator's server-side applies.
FIELD_MANAGER = "clarion-operator"


class NotServed(Exception):
    """The API server serves no such resource (its CRD is not installed)."""


def _status(exc: ApiException) -> int:
    return int(exc.status or 0)


def _decode(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


@dataclass(frozen=True)
class DeploymentSize:
    """A Deployment's spec.replicas and status.readyReplicas (0 when the status has none)."""

    replicas: int
    ready: int


class Kube:
    """Typed-enough wrappers of the calls the operator makes."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._client: Any = client
        self._core = kubernetes.client.CoreV1Api(client)
        self._apps = kubernetes.client.AppsV1Api(client)
        self._batch = kubernetes.client.BatchV1Api(client)
        self._custom = kubernetes.client.CustomObjectsApi(client)

    def close(self) -> None:
        self._client.close()

    async def _read(self, fn: Any, *args: Any) -> dict[str, Any] | None:
        try:
            return _decode(await asyncio.to_thread(fn, *args, _preload_content=False))
        except ApiException as exc:
            if _status(exc) == 404:
                return None
            raise

    async def _create(self, fn: Any, *args: Any) -> bool:
        """True when created, False when it already existed."""
        try:
            await asyncio.to_thread(fn, *args, _preload_content=False)
        except ApiException as exc:
            if _status(exc) == 409:
                return False
            raise
        return True

    # Secrets

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None when there is no such Secret."""
        body = await self._read(self._core.read_namespaced_secret, name, namespace)
        if body is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}

    async def create_secret(self, body: dict[str, Any]) -> bool:
        return await self._create(self._core.create_namespaced_secret, body["metadata"]["namespace"], body)

    async def apply_secret(self, body: dict[str, Any]) -> None:
        """Create the Secret, or overwrite its data when it exists with other values."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if await self.create_secret(body):
            return
        current = await self.read_secret(namespace, name)
        if current == body["stringData"]:
            return
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "stringData": body["stringData"]}
        await asyncio.to_thread(self._core.patch_namespaced_secret, name, namespace, patch,
                                _preload_content=False)

    # Deployments

    async def apply_deployment(self, body: dict[str, Any], *, scaled: bool = False) -> None:
        """Create the Deployment, or bring its labels, pod template and (unless `scaled`: a scaler
        owns them once it exists) replicas to `body`'s."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if await self._create(self._apps.create_namespaced_deployment, namespace, body):
            return
        spec: dict[str, Any] = {"template": body["spec"]["template"]}
        if not scaled:
            spec["replicas"] = body["spec"]["replicas"]
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "spec": spec}
        await asyncio.to_thread(self._apps.patch_namespaced_deployment, name, namespace, patch,
                                _preload_content=False)

    async def delete_deployment(self, namespace: str, name: str) -> None:
        """Delete the Deployment (its pods go in the background); nothing when there is none."""
        try:
            await asyncio.to_thread(self._apps.delete_namespaced_deployment, name, namespace,
                                    propagation_policy="Background", _preload_content=False)
        except ApiException as exc:
            if _status(exc) != 404:
                raise

    async def deployment_size(self, namespace: str, name: str) -> DeploymentSize | None:
        """The Deployment's desired and ready replicas; None when there is none."""
        body = await self._read(self._apps.read_namespaced_deployment, name, namespace)
        if body is None:
            return None
        return DeploymentSize(replicas=int(body.get("spec", {}).get("replicas", 0)),
                              ready=int((body.get("status") or {}).get("readyReplicas") or 0))

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set the Deployment's desired replicas through its scale subresource."""
        await asyncio.to_thread(self._apps.patch_namespaced_deployment_scale, name, namespace,
                                {"spec": {"replicas": replicas}}, _preload_content=False)

    # Jobs

    async def create_job(self, body: dict[str, Any]) -> bool:
        return await self._create(self._batch.create_namespaced_job, body["metadata"]["namespace"], body)

    async def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        try:
            await asyncio.to_thread(self._batch.patch_namespaced_job, name, namespace,
                                    {"spec": {"suspend": suspend}}, _preload_content=False)
        except ApiException as exc:
            if _status(exc) != 404:
                raise

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and (in the background) its pods."""
        try:
            await asyncio.to_thread(self._batch.delete_namespaced_job, name, namespace,
                                    propagation_policy="Background", _preload_content=False)
        except ApiException as exc:
            if _status(exc) != 404:
                raise

    # Other projects' resources (KEDA)

    async def apply_custom(self, plural: str, body: dict[str, Any]) -> None:
        """Create or update a namespaced custom object by server-side apply: the fields the operator set
        before and left out now are removed; a field the CRD does not know is refused (fieldValidation
        Strict). Raises NotServed when the API server has no such resource."""
        group, version = body["apiVersion"].split("/")
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object, group, version, namespace, plural, name, body,
                field_manager=FIELD_MANAGER, force=True, field_validation="Strict",
                _content_type="application/apply-patch+yaml", _preload_content=False)
        except ApiException as exc:
            if _status(exc) == 404:  # an apply creates a missing object: 404 is the resource itself
                raise NotServed(f"{plural}.{group}/{version} is not served by the API server") from exc
            raise

    async def delete_custom(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        """Delete a namespaced custom object; nothing when there is none, or no such resource."""
        group, version = api_version.split("/")
        try:
            await asyncio.to_thread(self._custom.delete_namespaced_custom_object, group, version, namespace,
                                    plural, name, _preload_content=False)
        except ApiException as exc:
            if _status(exc) != 404:
                raise

    # Clarion resources

    async def annotate_resource(
        self, plural: str, namespace: str, name: str, annotations: dict[str, str]
    ) -> None:
        try:
            await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name,
                {"metadata": {"annotations": annotations}}, _preload_content=False)
        except ApiException as exc:
            if _status(exc) != 404:
                raise
