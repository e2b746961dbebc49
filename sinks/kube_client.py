"""A Kubernetes API client from a kubeconfig file or, without one, from the pod's service account."""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


def in_cluster() -> bool:
    """True inside a pod with a service account (what `load_incluster_config` needs)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from `kubeconfig`, or from the in-cluster service account when it is None."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)
