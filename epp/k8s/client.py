"""Connecting to the Kubernetes API with kubernetes_asyncio.

Where the configuration comes from, in this order (as controller-runtime's GetConfig):
1. `KUBECONFIG` (a path, or several joined by ':'), when set;
2. the pod's service account (`KUBERNETES_SERVICE_HOST` / `_PORT` and the token and CA in
   /var/run/secrets/kubernetes.io/serviceaccount), when running in a cluster;
3. `~/.kube/config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    pass


def _in_cluster_available(environ: Mapping[str, str], service_account_dir: Path) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (service_account_dir / "token").is_file()


async def connect(
    environ: Mapping[str, str] | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> tuple[client.ApiClient, str]:
    """An ApiClient and a description of where its configuration came from."""
    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    kubeconfig = env.get("KUBECONFIG", "")
    try:
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            source = f"KUBECONFIG {kubeconfig}"
        elif _in_cluster_available(env, service_account_dir):
            loader = config.incluster_config.InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=dict(env),
            )
            loader.load_and_set(configuration)
            source = f"in-cluster service account ({service_account_dir})"
        else:
            default = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
            if not default.is_file():
                raise KubeConfigError(
                    "no Kubernetes configuration: not running in a cluster (KUBERNETES_SERVICE_HOST unset or no "
                    f"service-account token in {service_account_dir}), KUBECONFIG unset and {default} missing; "
                    "set KUBECONFIG to a kubeconfig file, or use --endpoints / --endpoints-file without Kubernetes"
                )
            await config.load_kube_config(config_file=str(default), client_configuration=configuration)
            source = f"kubeconfig {default}"
    except ConfigException as exc:
        raise KubeConfigError(f"invalid Kubernetes configuration: {exc}") from None
    except OSError as exc:
        raise KubeConfigError(f"cannot read the Kubernetes configuration: {exc}") from None
    except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
        raise KubeConfigError(f"invalid kubeconfig {kubeconfig or '~/.kube/config'}: {exc}") from None
    return client.ApiClient(configuration=configuration), source
