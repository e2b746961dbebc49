"""deploy/kubernetes: the install renders with `kubectl kustomize` and `kustomize build` (the pinned tools),
its built-in objects are valid for Kubernetes 1.32 (offline JSON schemas, strict), its custom resources set
what they must, and it agrees with the code it runs: the CLI parses every container's arguments, the topics
are those of schemas/topics.py, the APIService serves the API group of sinks/guestinfos.py, and every port,
Secret and account it names exists.

Three renders: the install (deploy/kubernetes), the install with its own Kafka (deploy/kubernetes/strimzi)
and the install with the VMI status sink component (tests/deploy/data/with-status-sink)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, cast

import kubernetes_validate
import pytest
import yaml

from guestinfo.cli import ENV_BOOTSTRAP, build_parser
from guestinfo.config import checked_store_url, parse_bootstrap_servers, parse_listen, parse_shard
from schemas import topics
from sinks import guestinfos
from tests import tools

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
RENDERS = {
    "install": KUSTOMIZE,
    "strimzi": KUSTOMIZE / "strimzi",
    "with-status-sink": Path(__file__).parent / "data" / "with-status-sink",
}
KUBERNETES_VERSION = "1.32"
NAMESPACE = "guestinfo"
#: Groups of custom resources the install uses; kubernetes-validate has no schema for them, so the tests
#: below check the fields set on them.
CUSTOM_GROUPS = {"cert-manager.io", "monitoring.coreos.com", "kafka.strimzi.io"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}
#: Values of the downward-API fields the pods read, for expanding $(VAR) in arguments.
SAMPLE_FIELDS = {"spec.nodeName": "node-1", "metadata.name": "pod-1", "metadata.namespace": NAMESPACE,
                 "metadata.labels['apps.kubernetes.io/pod-index']": "1"}
VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def rendered(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result.stdout


def kustomize(path: Path) -> list[Obj]:
    """What `kubectl kustomize` (so `kubectl apply -k`) makes of `path`."""
    return [cast(Obj, doc) for doc in yaml.safe_load_all(rendered(tools.kubectl(), "kustomize", str(path))) if doc]


RENDERED: dict[str, list[Obj]] = {name: kustomize(path) for name, path in RENDERS.items()}


# ---- looking things up in a render -------------------------------------------------------------------


def group_of(obj: Obj) -> str:
    api_version = cast(str, obj["apiVersion"])
    return api_version.rpartition("/")[0]


def ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


def find(objs: Iterable[Obj], kind: str, name: str, namespace: str | None = NAMESPACE) -> Obj:
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
            return obj
    raise AssertionError(f"no {kind} {namespace}/{name} in the render")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


class Container(NamedTuple):
    render: str
    workload: Obj
    pod: Obj  # the pod template's spec
    spec: Obj

    @property
    def labels(self) -> dict[str, str]:
        return cast(dict[str, str], self.workload["spec"]["template"]["metadata"]["labels"])

    @property
    def id(self) -> str:
        return f"{self.render}-{ident(self.workload)}/{self.spec['name']}"


def workloads(objs: Iterable[Obj]) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] in WORKLOAD_KINDS]


def containers_of(render: str) -> Iterator[Container]:
    for workload in workloads(RENDERED[render]):
        pod = workload["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            yield Container(render, workload, pod, spec)


ALL_CONTAINERS = [container for render in RENDERED for container in containers_of(render)]
CONTAINER_PARAMS = [pytest.param(container, id=container.id) for container in ALL_CONTAINERS]


def container_named(render: str, name: str) -> Container:
    for container in containers_of(render):
        if container.spec["name"] == name:
            return container
    raise AssertionError(f"no container {name!r} in render {render!r}")


def pods_selected(objs: Iterable[Obj], selector: dict[str, str]) -> list[Container]:
    return [
        Container("", workload, workload["spec"]["template"]["spec"], spec)
        for workload in workloads(objs)
        if selects(selector, workload["spec"]["template"]["metadata"]["labels"])
        for spec in workload["spec"]["template"]["spec"]["containers"]
    ]


def named_ports(spec: Obj) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in spec.get("ports", []) if "name" in port}


def container_port(spec: Obj, port: int | str) -> int | None:
    """The container port a probe, Service or policy names (by name or number), or None."""
    if isinstance(port, str):
        return named_ports(spec).get(port)
    return port if port in {p["containerPort"] for p in spec.get("ports", [])} else None


def secret_data(secret: Obj) -> dict[str, str]:
    data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


def container_env(objs: list[Obj], container: Container) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom sources, then env (field refs as samples)."""
    env: dict[str, str] = {}
    for source in container.spec.get("envFrom", []):
        if "configMapRef" in source:
            data = find(objs, "ConfigMap", source["configMapRef"]["name"]).get("data") or {}
        else:
            data = secret_data(find(objs, "Secret", source["secretRef"]["name"]))
        env.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for var in container.spec.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            env[var["name"]] = SAMPLE_FIELDS[ref["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = find(objs, "ConfigMap", key["name"])["data"][key["key"]]
        else:
            key = ref["secretKeyRef"]
            env[var["name"]] = secret_data(find(objs, "Secret", key["name"]))[key["key"]]
    return env


def entrypoint() -> list[str]:
    """ENTRYPOINT of deploy/Containerfile (the exec form): the program and its fixed leading arguments."""
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return cast(list[str], json.loads(line.removeprefix("ENTRYPOINT ")))
    raise AssertionError("deploy/Containerfile has no ENTRYPOINT")


def parsed_args(container: Container, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The container's command line parsed by the real CLI, with the environment the pod would have."""
    env = container_env(RENDERED[container.render], container)
    args = [VAR_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), arg) for arg in container.spec["args"]]
    unexpanded = [arg for arg in args if VAR_REFERENCE.search(arg)]
    assert not unexpanded, f"arguments refer to variables the container does not have: {unexpanded}"
    monkeypatch.delenv(ENV_BOOTSTRAP, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    program, *fixed = entrypoint()
    assert program == "guestinfo"
    try:
        return build_parser().parse_args([*fixed, *args])
    except SystemExit as exc:
        pytest.fail(f"guestinfo {' '.join([*fixed, *args])} is refused by the CLI (exit {exc.code}): see stderr")


def volume_of(container: Container, mount: Obj) -> Obj:
    return next(volume for volume in container.pod["volumes"] if volume["name"] == mount["name"])


def mount_holding(container: Container, path: str) -> Obj | None:
    """The volume mount that contains `path`, if any."""
    for mount in container.spec.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            return cast(Obj, mount)
    return None


def serving_certificate(objs: list[Obj]) -> Obj:
    """The Certificate whose CA cert-manager injects into the APIService."""
    apiservice = of_kind(objs, "APIService")[0]
    namespace, _, name = apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].partition("/")
    return find(objs, "Certificate", name, namespace)


# ---- the renders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("render", RENDERED)
def test_render_has_each_object_once(render: str) -> None:
    keys = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in RENDERED[render]]
    assert keys
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("render", RENDERED)
def test_kustomize_build_gives_the_objects_kubectl_apply_k_applies(render: str) -> None:
    """Operators render with `kustomize build` (GitOps, CI) or apply with `kubectl apply -k`: the pinned
    standalone kustomize is the one kubectl embeds, and both make the same objects of each render."""
    built = [doc for doc in yaml.safe_load_all(rendered(tools.kustomize(), "build", str(RENDERS[render]))) if doc]
    assert built == RENDERED[render]


BUILTIN_PARAMS = [
    pytest.param(obj, id=f"{render}-{ident(obj)}")
    for render, objs in RENDERED.items()
    for obj in objs
    if group_of(obj) not in CUSTOM_GROUPS
]


@pytest.mark.parametrize("obj", BUILTIN_PARAMS)
def test_builtin_object_is_valid_for_kubernetes_1_32_with_no_unknown_fields(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{ident(obj)} is not valid for Kubernetes {KUBERNETES_VERSION}: {exc.message} at {list(exc.path)}")
    except kubernetes_validate.SchemaNotFoundError as exc:  # not built in, and not a known custom group either
        pytest.fail(exc.message)


@pytest.mark.parametrize("render", RENDERED)
def test_namespaced_objects_are_in_guestinfo_but_the_kube_system_role_binding(render: str) -> None:
    objs = RENDERED[render]
    assert find(objs, "Namespace", NAMESPACE, None)
    misplaced = []
    for obj in objs:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            expected = None
        elif obj["kind"] == "RoleBinding" and obj["roleRef"]["name"] == "extension-apiserver-authentication-reader":
            expected = "kube-system"
        else:
            expected = NAMESPACE
        if namespace != expected:
            misplaced.append(f"{ident(obj)} in {namespace}")
    assert not misplaced


@pytest.mark.parametrize("render", RENDERED)
def test_objects_and_pod_templates_are_labelled_part_of_guestinfo(render: str) -> None:
    labelled = [obj["metadata"].get("labels", {}) for obj in RENDERED[render]]
    labelled += [w["spec"]["template"]["metadata"]["labels"] for w in workloads(RENDERED[render])]
    assert all(labels.get("app.kubernetes.io/part-of") == "guestinfo" for labels in labelled)


def test_every_container_runs_the_one_image_set_in_kustomization() -> None:
    kustomization = yaml.safe_load((KUSTOMIZE / "base" / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    assert {container.spec["image"] for container in ALL_CONTAINERS} == {expected}
    assert {"collect", "join", "serve", "status", "metrics"} == {container.spec["name"] for container in ALL_CONTAINERS}


# ---- containers against the CLI ---------------------------------------------------------------------


def option_strings(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The options of the program and of one sub-command, spelled out (argparse also takes abbreviations)."""
    options = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[command]
            options |= {option for sub_action in sub._actions for option in sub_action.option_strings}
    return options


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_container_args_parse_with_the_real_cli(container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    args = parsed_args(container, monkeypatch)
    flags = {arg.partition("=")[0] for arg in [*entrypoint()[1:], *container.spec["args"]] if arg.startswith("--")}
    unknown = flags - option_strings(build_parser(), args.command)
    assert not unknown, f"not the CLI's own spelling (argparse took them as abbreviations): {sorted(unknown)}"
    assert args.command == container.spec["name"], "each container is named after its sub-command"
    assert args.log_format == "json"
    parse_bootstrap_servers(args.bootstrap_servers)  # from GUESTINFO_BOOTSTRAP_SERVERS, never a flag
    assert "--bootstrap-servers" not in container.spec["args"]
    if args.command == "serve":
        checked_store_url(args.store, args.state_dir)
        assert args.store.startswith("postgresql://")
    if args.command == "metrics":
        _, count = parse_shard(args.shard)
        workload = container.workload
        assert workload["kind"] == "StatefulSet", "the shard index is the pod's ordinal"
        assert count == workload["spec"]["replicas"], "one shard per replica: --shard's N is the replica count"


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_listen_flags_and_container_ports_agree(container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    args = parsed_args(container, monkeypatch)
    listens = [getattr(args, flag, None) for flag in ("metrics_listen", "api_listen", "listen")]
    ports = {parse_listen(listen).port for listen in listens if listen}
    assert all(parse_listen(listen).host == "0.0.0.0" for listen in listens if listen)
    assert ports == {port["containerPort"] for port in container.spec.get("ports", [])}
    assert all(port.get("name") for port in container.spec.get("ports", [])), "ports are named for the monitors"


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_state_dir_is_a_writable_emptydir_on_a_read_only_root(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = str(parsed_args(container, monkeypatch).state_dir)
    mount = next(m for m in container.spec["volumeMounts"] if m["mountPath"] == state_dir)
    assert not mount.get("readOnly")
    assert "emptyDir" in volume_of(container, mount)
    assert container.spec["securityContext"]["readOnlyRootFilesystem"] is True


# ---- containers: probes, resources, security ------------------------------------------------------------


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_containers_with_ports_have_probes_on_existing_ports(container: Container) -> None:
    assert container.spec.get("ports"), "every container serves its health"
    for kind in ("livenessProbe", "readinessProbe"):
        probe = container.spec[kind]
        action = probe.get("httpGet") or probe.get("tcpSocket")
        assert action, f"{kind} is neither httpGet nor tcpSocket"
        assert container_port(container.spec, action["port"]), f"{kind} port {action['port']} is not a container port"


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_containers_request_and_limit_cpu_and_memory(container: Container) -> None:
    resources = container.spec["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize(
    "container", [pytest.param(c, id=c.id) for c in ALL_CONTAINERS if c.spec["name"] != "collect"]
)
def test_pods_but_the_collector_run_locked_down_as_non_root(container: Container) -> None:
    pod, own = container.pod["securityContext"], container.spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert not container.pod.get("hostNetwork") and not own.get("privileged")


def test_collector_is_root_with_only_dac_override_and_spc_t() -> None:
    collector = container_named("install", "collect")
    pod, own = collector.pod["securityContext"], collector.spec["securityContext"]
    assert pod["runAsUser"] == 0
    assert pod["seLinuxOptions"] == {"type": "spc_t"}
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert own["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}
    assert own["allowPrivilegeEscalation"] is False
    assert not own.get("privileged")
    assert not collector.pod.get("hostNetwork") and not collector.pod.get("hostPID")


def test_collector_mounts_kubelet_pods_read_only_and_looks_there(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = container_named("install", "collect")
    [mount] = [m for m in collector.spec["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet/pods"]
    assert mount["readOnly"] is True
    assert mount["mountPropagation"] == "HostToContainer"
    assert volume_of(collector, mount)["hostPath"]["path"] == "/var/lib/kubelet/pods"
    assert parsed_args(collector, monkeypatch).launcher_pods_dir == mount["mountPath"]
    host_paths = [v for v in collector.pod["volumes"] if "hostPath" in v]
    assert host_paths == [volume_of(collector, mount)], "no other host folder"


def test_collector_runs_on_kubevirt_nodes_with_their_taints_and_its_node_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = container_named("install", "collect")
    assert collector.workload["kind"] == "DaemonSet"
    assert collector.pod["nodeSelector"] == {"kubevirt.io/schedulable": "true"}
    tolerated = {toleration["key"] for toleration in collector.pod["tolerations"]}
    assert {"CriticalAddonsOnly", "node-role.kubernetes.io/control-plane"} <= tolerated
    assert parsed_args(collector, monkeypatch).node_name == SAMPLE_FIELDS["spec.nodeName"]


# ---- accounts and RBAC ------------------------------------------------------------------------------


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_pods_run_as_their_own_account_with_a_token_only_when_they_call_the_api(container: Container) -> None:
    objs = RENDERED[container.render]
    account = find(objs, "ServiceAccount", container.pod["serviceAccountName"])
    calls_api = container.spec["name"] in {"serve", "status"}
    assert account["automountServiceAccountToken"] is calls_api
    assert container.pod.get("automountServiceAccountToken", True) is calls_api
    others = [c for c in ALL_CONTAINERS if c.render == container.render and c.workload is not container.workload]
    assert container.pod["serviceAccountName"] not in {c.pod["serviceAccountName"] for c in others}


def bound_to(objs: list[Obj], kind: str, role: str, account: str) -> list[Obj]:
    return [
        binding
        for binding in of_kind(objs, kind)
        if binding["roleRef"]["name"] == role
        and {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in binding["subjects"]
    ]


def test_api_account_is_bound_for_delegated_authentication_and_authorization() -> None:
    objs = RENDERED["install"]
    account = container_named("install", "serve").pod["serviceAccountName"]
    assert account == "guestinfo-api"
    assert bound_to(objs, "ClusterRoleBinding", "system:auth-delegator", account)
    [reader] = bound_to(objs, "RoleBinding", "extension-apiserver-authentication-reader", account)
    assert reader["metadata"]["namespace"] == "kube-system" and reader["roleRef"]["kind"] == "Role"


def granted(roles: Iterable[Obj], group: str, resource: str) -> set[str]:
    return {
        verb
        for role in roles
        for rule in role["rules"]
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("level", ["view", "edit", "admin"])
def test_guestinfo_reads_are_aggregated_into_the_user_facing_roles(level: str) -> None:
    label = f"rbac.authorization.k8s.io/aggregate-to-{level}"
    cluster_roles = of_kind(RENDERED["install"], "ClusterRole")
    roles = [r for r in cluster_roles if r["metadata"].get("labels", {}).get(label) == "true"]
    assert granted(roles, guestinfos.GROUP, guestinfos.RESOURCE) == {"get", "list", "watch"}
    for subresource in guestinfos.SUBRESOURCES:
        assert granted(roles, guestinfos.GROUP, f"{guestinfos.RESOURCE}/{subresource}") == {"get"}


# ---- the API: Service, APIService, certificates ----------------------------------------------------------


def test_service_target_ports_are_ports_of_the_selected_containers() -> None:
    objs = RENDERED["install"]
    for service in of_kind(objs, "Service"):
        selected = pods_selected(objs, service["spec"]["selector"])
        assert selected, f"{ident(service)} selects no pods"
        for port in service["spec"]["ports"]:
            assert all(container_port(c.spec, port["targetPort"]) for c in selected), port


def test_apiservice_serves_the_api_group_through_the_serve_service(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = RENDERED["install"]
    [apiservice] = of_kind(objs, "APIService")
    spec = apiservice["spec"]
    assert (spec["group"], spec["version"]) == (guestinfos.GROUP, guestinfos.VERSION)
    assert apiservice["metadata"]["name"] == f"{guestinfos.VERSION}.{guestinfos.GROUP}"
    assert (spec["groupPriorityMinimum"], spec["versionPriority"]) == (1000, 15)
    assert "insecureSkipTLSVerify" not in spec and "caBundle" not in spec  # cainjector fills caBundle
    service = find(objs, "Service", spec["service"]["name"], spec["service"]["namespace"])
    [port] = [p for p in service["spec"]["ports"] if p["port"] == spec["service"]["port"]]
    serve = container_named("install", "serve")
    assert selects(service["spec"]["selector"], serve.labels)
    listen = parse_listen(parsed_args(serve, monkeypatch).api_listen)
    assert container_port(serve.spec, port["targetPort"]) == listen.port
    names = serving_certificate(objs)["spec"]["dnsNames"]
    assert f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in names


def test_serve_reads_its_pair_from_the_mounted_serving_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    serve = container_named("install", "serve")
    args = parsed_args(serve, monkeypatch)
    secret_name = serving_certificate(RENDERED["install"])["spec"]["secretName"]
    for path, key in ((args.tls_cert_file, "tls.crt"), (args.tls_private_key_file, "tls.key")):
        mount = mount_holding(serve, path)
        assert mount, f"{path} is on no volume"
        assert mount["readOnly"] is True and "subPath" not in mount  # a renewed pair reaches the pod
        assert volume_of(serve, mount)["secret"]["secretName"] == secret_name
        assert PurePosixPath(path).relative_to(mount["mountPath"]) == PurePosixPath(key)


def test_certificates_chain_from_a_self_signed_issuer_through_a_ca_issuer() -> None:
    objs = RENDERED["install"]

    def issuer_of(certificate: Obj) -> Obj:
        ref = certificate["spec"]["issuerRef"]
        assert (ref["kind"], ref.get("group", "cert-manager.io")) == ("Issuer", "cert-manager.io")
        return find(objs, "Issuer", ref["name"], certificate["metadata"]["namespace"])

    serving = serving_certificate(objs)
    assert not serving["spec"].get("isCA")
    ca_issuer = issuer_of(serving)
    [ca] = [c for c in of_kind(objs, "Certificate") if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True
    assert issuer_of(ca)["spec"] == {"selfSigned": {}}
    assert serving["spec"]["secretName"] == "guestinfo-api-tls"
    assert set(serving["spec"]["dnsNames"]) == {
        "guestinfo-api.guestinfo.svc", "guestinfo-api.guestinfo.svc.cluster.local",
    }


# ---- monitoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["guestinfo-collector", "guestinfo-join"])
def test_pod_monitor_scrapes_a_named_metrics_port_the_network_policy_admits(name: str) -> None:
    objs = RENDERED["install"]
    monitor = find(objs, "PodMonitor", name)
    selected = pods_selected(objs, monitor["spec"]["selector"]["matchLabels"])
    assert selected
    admitted = admitted_ports(objs, selected[0])
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for container in selected:
            assert endpoint["port"] in named_ports(container.spec)
            assert named_ports(container.spec)[endpoint["port"]] in admitted


def test_service_monitor_scrapes_serve_over_verified_https_with_a_metrics_reader_token() -> None:
    objs = RENDERED["install"]
    monitor = find(objs, "ServiceMonitor", "guestinfo-serve")
    selector = monitor["spec"]["selector"]["matchLabels"]
    [service] = [s for s in of_kind(objs, "Service") if selects(selector, s["metadata"]["labels"])]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    tls = endpoint["tlsConfig"]
    certificate = serving_certificate(objs)
    assert tls["ca"]["secret"] == {"name": certificate["spec"]["secretName"], "key": "ca.crt"}
    assert tls["serverName"] in certificate["spec"]["dnsNames"] and not tls.get("insecureSkipVerify")
    assert endpoint["authorization"]["type"] == "Bearer"
    token = find(objs, "Secret", endpoint["authorization"]["credentials"]["name"])
    assert token["type"] == "kubernetes.io/service-account-token"
    assert endpoint["authorization"]["credentials"]["key"] == "token"
    account = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert find(objs, "ServiceAccount", account)
    [binding] = bound_to(objs, "ClusterRoleBinding", "guestinfo-metrics-reader", account)
    reader = find(objs, "ClusterRole", binding["roleRef"]["name"], None)
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


# ---- running properly: disruption budgets, network policies, spreading ---------------------------------


@pytest.mark.parametrize("name", ["join", "serve"])
def test_replicated_deployments_have_a_disruption_budget_and_spread_over_nodes(name: str) -> None:
    objs = RENDERED["install"]
    container = container_named("install", name)
    labels = container.labels
    assert container.workload["spec"]["replicas"] >= 2
    budgets = [b for b in of_kind(objs, "PodDisruptionBudget") if selects(b["spec"]["selector"]["matchLabels"], labels)]
    assert [b["spec"] for b in budgets] == [{"maxUnavailable": 1, "selector": budgets[0]["spec"]["selector"]}]
    [spread] = container.pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert selects(spread["labelSelector"]["matchLabels"], container.labels)


def policies_for(objs: list[Obj], container: Container) -> list[Obj]:
    return [
        p for p in of_kind(objs, "NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], container.labels)
    ]


def admitted_ports(objs: list[Obj], container: Container) -> set[int]:
    ports = set()
    for policy in policies_for(objs, container):
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                resolved = container_port(container.spec, port["port"])
                assert resolved, f"{ident(policy)} admits port {port['port']}, not one of the container's"
                ports.add(resolved)
    return ports


@pytest.mark.parametrize("container", CONTAINER_PARAMS)
def test_network_policy_admits_exactly_the_container_ports(container: Container) -> None:
    objs = RENDERED[container.render]
    policies = policies_for(objs, container)
    assert len(policies) == 1 and policies[0]["spec"]["policyTypes"] == ["Ingress"]
    assert admitted_ports(objs, container) == {p["containerPort"] for p in container.spec.get("ports", [])}
    for rule in policies[0]["spec"].get("ingress", []):
        assert "from" not in rule, "from anywhere: the aggregator and Prometheus are not pods of known labels"


# ---- the status sink component ------------------------------------------------------------------------


def test_status_sink_is_a_component_left_out_of_the_default_install() -> None:
    component = yaml.safe_load((KUSTOMIZE / "components" / "status-sink" / "kustomization.yaml").read_text())
    assert (component["apiVersion"], component["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    for render in ("install", "strimzi"):
        assert "status" not in {container.spec["name"] for container in containers_of(render)}
    assert not [obj for obj in RENDERED["install"] if "status" in obj["metadata"]["name"]]


def test_status_sink_may_read_and_patch_vmis_as_its_own_account() -> None:
    objs = RENDERED["with-status-sink"]
    status = container_named("with-status-sink", "status")
    assert status.workload["spec"]["replicas"] == 1
    account = status.pod["serviceAccountName"]
    assert account == "guestinfo-status"
    [binding] = bound_to(objs, "ClusterRoleBinding", "guestinfo-status", account)
    role = find(objs, "ClusterRole", binding["roleRef"]["name"], None)
    assert granted([role], "kubevirt.io", "virtualmachineinstances") == {"get", "list", "watch", "patch"}
    assert {"--kube-api", "--kubeconfig"}.isdisjoint(status.spec["args"]), "in a pod it uses its account"


# ---- the Strimzi overlay ---------------------------------------------------------------------------------


def test_strimzi_overlay_keeps_the_install_but_the_bootstrap_servers() -> None:
    install, strimzi = RENDERED["install"], RENDERED["strimzi"]
    added = [obj for obj in strimzi if obj not in install]
    assert {ident(obj) for obj in added} == {
        "ConfigMap/guestinfo-config", "Kafka/guestinfo", "KafkaNodePool/dual-role",
        *(f"KafkaTopic/{name}" for name in topics.TOPIC_CONFIGS),
    }
    assert len(strimzi) == len(install) + len(added) - 1


def test_strimzi_topics_are_the_schema_topics_with_one_partition_count() -> None:
    objs = RENDERED["strimzi"]
    kafka = of_kind(objs, "Kafka")[0]["metadata"]["name"]
    topic_objs = of_kind(objs, "KafkaTopic")
    assert {t["spec"].get("topicName", t["metadata"]["name"]) for t in topic_objs} == set(topics.TOPIC_CONFIGS)
    assert {t["spec"]["partitions"] for t in topic_objs} == {topics.PARTITIONS}, "the join is co-partitioned"
    brokers = sum(p["spec"]["replicas"] for p in of_kind(objs, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    assert {t["spec"]["replicas"] for t in topic_objs} == {3} and brokers >= 3
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topic_objs} == {kafka}


@pytest.mark.parametrize("topic", list(topics.TOPIC_CONFIGS))
def test_strimzi_topic_config_matches_schemas(topic: str) -> None:
    [obj] = [t for t in of_kind(RENDERED["strimzi"], "KafkaTopic") if t["metadata"]["name"] == topic]
    config = obj["spec"]["config"]
    assert config["cleanup.policy"] == topics.TOPIC_CONFIGS[topic]["cleanup.policy"]
    if topic == topics.DEAD_LETTER_TOPIC:
        assert int(config["retention.ms"]) == 7 * 24 * 3600 * 1000


def test_strimzi_kafka_is_kraft_with_plain_and_tls_listeners_on_a_node_pool() -> None:
    objs = RENDERED["strimzi"]
    [kafka] = of_kind(objs, "Kafka")
    annotations = kafka["metadata"]["annotations"]
    assert (annotations["strimzi.io/kraft"], annotations["strimzi.io/node-pools"]) == ("enabled", "enabled")
    assert "zookeeper" not in kafka["spec"]
    listeners = {(lis["name"], lis["port"], lis["type"], lis["tls"]) for lis in kafka["spec"]["kafka"]["listeners"]}
    assert listeners == {("plain", 9092, "internal", False), ("tls", 9093, "internal", True)}
    assert "topicOperator" in kafka["spec"]["entityOperator"], "it makes the KafkaTopics"
    [pool] = of_kind(objs, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"] and pool["spec"]["replicas"] == 3
    assert pool["spec"]["storage"]["type"] == "persistent-claim"


def test_strimzi_bootstrap_servers_name_the_plain_listener_of_the_kafka() -> None:
    objs = RENDERED["strimzi"]
    [kafka] = of_kind(objs, "Kafka")
    [plain] = [lis for lis in kafka["spec"]["kafka"]["listeners"] if not lis["tls"]]
    meta = kafka["metadata"]
    expected = f"{meta['name']}-kafka-bootstrap.{meta['namespace']}:{plain['port']}"
    assert find(objs, "ConfigMap", "guestinfo-config")["data"][ENV_BOOTSTRAP] == expected


# ---- the documentation ----------------------------------------------------------------------------------


def install_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Install on a cluster")
    return readme[start : readme.index("\n## ", start + 1)]


def test_paths_named_in_the_install_docs_exist() -> None:
    named = {ROOT / path for path in re.findall(r"deploy/[\w./-]*\w", install_section())}
    deploy_readme = (DEPLOY / "README.md").read_text()
    named |= {DEPLOY / path for path in re.findall(r"`((?:kubernetes|Containerfile)[\w./-]*)`", deploy_readme)}
    assert len(named) > 5
    assert [str(path.relative_to(ROOT)) for path in named if not path.exists()] == []


def test_names_in_the_install_section_are_those_of_the_manifests() -> None:
    objs = [obj for render in RENDERED.values() for obj in render]
    known = {obj["metadata"]["name"] for obj in objs}
    known |= {c["spec"]["secretName"] for c in of_kind(objs, "Certificate")}
    known |= {f"{k['metadata']['name']}-kafka-bootstrap" for k in of_kind(objs, "Kafka")}
    named = set(re.findall(r"\bguestinfo-[a-z][a-z-]*[a-z]\b", install_section()))
    assert named and named <= known, f"not in the manifests: {sorted(named - known)}"
    for text in ("v1alpha1.guestinfo.kubevirt.io", "-n guestinfo", "8443"):
        assert text in install_section()


def readme_overlay(index: int, tmp_path: Path) -> list[Obj]:
    """The install section's `index`th kustomization, rendered from a folder beside this repository's."""
    blocks = re.findall(r"```yaml\n(.*?)```", install_section(), re.DOTALL)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    deploy = os.path.relpath(DEPLOY, overlay)  # kustomize takes only relative paths
    (overlay / "kustomization.yaml").write_text(blocks[index].replace("../deploy/", f"{deploy}/"))
    return kustomize(overlay)


def test_readme_overlay_adds_the_status_sink_and_drops_the_monitors(tmp_path: Path) -> None:
    objs = readme_overlay(0, tmp_path)
    assert "status" in {c["name"] for w in workloads(objs) for c in w["spec"]["template"]["spec"]["containers"]}
    assert [ident(obj) for obj in objs if group_of(obj) == "monitoring.coreos.com"] == []
    monitoring = [obj for obj in RENDERED["with-status-sink"] if group_of(obj) == "monitoring.coreos.com"]
    assert len(monitoring) == 5, "three PodMonitors, a ServiceMonitor and the PrometheusRule"
    assert len(objs) == len(RENDERED["with-status-sink"]) - len(monitoring)


def test_readme_overlay_without_cert_manager_sets_the_ca_bundle(tmp_path: Path) -> None:
    objs = readme_overlay(1, tmp_path)
    assert [ident(obj) for obj in objs if group_of(obj) == "cert-manager.io"] == []
    [apiservice] = of_kind(objs, "APIService")
    assert "caBundle" in apiservice["spec"] and "annotations" not in apiservice["metadata"]
    kubernetes_validate.validate(apiservice, KUBERNETES_VERSION, strict=True)
