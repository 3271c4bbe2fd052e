#!/usr/bin/env python3
"""Lints the Helm chart and renders it with Helm's own engine (helm-sdkpy).

helm-sdkpy exposes install but no `helm template`, so the chart is installed
into a throwaway API server on loopback that only answers what an install asks
(discovery, existence checks, creates) and keeps nothing. The release's
manifest, as Helm rendered it, is what gets written. Nothing is stored: the
release Secret Helm writes is answered and dropped like everything else.

    tests/chart_render.py OUT_DIR

writes into OUT_DIR:
  lint.json         Helm's lint result
  default.yaml      the plain-manifest install: Namespace, CRD, default rendering
                    (deploy/manifests/regbridge.yaml must equal it)
  custom.yaml       rendered with non-default values (CUSTOM_VALUES below)
  per-tenant.yaml   rendered with perTenantIdentity.enabled and its ServiceAccounts
  webhook-url.yaml  rendered with webhook.url (no Service in front of it)
  refused.json      values the chart must refuse (REFUSED_VALUES), and why
  timings.json      seconds per step
tests/chart.rs checks these files.
"""

import asyncio
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "regbridge"
NAMESPACE = "regbridge"
RELEASE = "regbridge"

# Non-default values: every optional template branch on.
CUSTOM_VALUES = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/mirror/regbridge", "tag": "0.1.0-rc1"},
    "fullnameOverride": "pull-bridge",
    "logFormat": "text",
    "leaderElection": {"enabled": True, "leaseName": "pull-bridge-leader"},
    "serviceAccount": {
        "create": True,
        "name": "pull-bridge-controller",
        "annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/regbridge",
            "iam.gke.io/gcp-service-account": "regbridge@my-project.iam.gserviceaccount.com",
            "azure.workload.identity/client-id": "c0ffee00-0000-4000-8000-000000000001",
        },
    },
    "perTenantIdentity": {"enabled": True, "serviceAccounts": [
        {"namespace": "team-a", "name": "registry-puller"},
        {"namespace": "team-b", "name": "registry-puller"},
    ]},
    "extraCA": {"configMap": "corp-ca", "key": "bundle.pem"},
    "metrics": {
        "port": 9090,
        "service": {"type": "ClusterIP", "port": 9090, "annotations": {"team": "platform"}},
        "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s",
                           "labels": {"release": "kube-prometheus-stack"}},
    },
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "networkPolicy": {
        "enabled": True,
        "webhook": {
            "apiServerCIDRs": ["10.0.0.0/28", "10.0.1.5/32"],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                      "podSelector": {"matchLabels": {"app": "konnectivity-agent"}}}],
        },
        "metrics": {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
    },
    "webhook": {"enabled": True, "port": 8443, "certManager": {"enabled": True}},
    "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "platform", "azure.workload.identity/use": "true"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "imagePullSecrets": [{"name": "mirror-pull"}],
    "clusterPullSecrets": [
        {
            "name": "dockerhub",
            "spec": {
                "secretName": "dockerhub-pull",
                "credentials": [{"static": {"secretRef": {"namespace": "regbridge", "name": "dockerhub"}}}],
                "namespaces": {"exclude": ["kube-*"]},
                "serviceAccounts": ["*"],
            },
        },
        {
            "name": "ecr",
            "labels": {"team": "platform"},
            "annotations": {"argocd.argoproj.io/sync-wave": "1"},
            "spec": {
                "credentials": [{"ecr": {"region": "eu-west-1", "registryIds": ["111122223333"]}}],
                "namespaces": {"selector": {"matchLabels": {"pulls-from": "ecr"}}},
                "refreshBefore": "2h",
            },
        },
    ],
}
# The ServiceAccount tests/rbac.rs's scenario requests a token for, a second
# one in the same namespace, and one whose name YAML 1.1 reads as a boolean.
PER_TENANT_VALUES = {"perTenantIdentity": {"enabled": True, "serviceAccounts": [
    {"namespace": "team-a", "name": "puller"},
    {"namespace": "team-a", "name": "builder"},
    {"namespace": "team-b", "name": "on"},
]}}
# The webhook reached by URL, as the e2e suite runs it, with a NetworkPolicy
# that admits only that caller to the webhook port.
WEBHOOK_URL_VALUES = {"webhook": {"url": "https://172.18.0.1:9443/"},
                      "networkPolicy": {"enabled": True, "webhook": {"apiServerCIDRs": ["172.18.0.1/32"]}}}
# Values the chart must refuse, each with a word its message must contain.
REFUSED_VALUES = {
    "per-tenant-unlisted": ({"perTenantIdentity": {"enabled": True}}, "perTenantIdentity.serviceAccounts"),
    "network-policy-without-sources": ({"networkPolicy": {"enabled": True}}, "networkPolicy.webhook.apiServerCIDRs"),
}

# What the throwaway API server serves: group/version -> [(plural, kind, namespaced)].
SERVED = {
    "v1": [("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True),
           ("services", "Service", True), ("secrets", "Secret", True),
           ("configmaps", "ConfigMap", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
    "admissionregistration.k8s.io/v1": [
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
    "cert-manager.io/v1": [("certificates", "Certificate", True), ("issuers", "Issuer", True)],
    "regbridge.dev/v1alpha1": [("clusterpullsecrets", "ClusterPullSecret", False)],
}


class ThrowawayApi(BaseHTTPRequestHandler):
    """Answers an install: discovery, 404 to every existence check, and 201
    echoing every create. CRDs come back Established."""

    protocol_version = "HTTP/1.1"
    log = []

    def log_message(self, *args):  # quiet
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        ThrowawayApi.log.append(("GET", self.path))
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "36", "gitVersion": "v1.36.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = {}
            for gv in SERVED:
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()]})
        gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if gv in SERVED:
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                    "resources": [{"name": p, "singularName": k.lower(), "kind": k,
                                                   "namespaced": ns,
                                                   "verbs": ["create", "delete", "get", "list",
                                                             "patch", "update", "watch"]}
                                                  for p, k, ns in SERVED[gv]]})
        if "customresourcedefinitions/" in path:
            name = path.rsplit("/", 1)[1]
            return self.reply(200, {"apiVersion": "apiextensions.k8s.io/v1",
                                    "kind": "CustomResourceDefinition",
                                    "metadata": {"name": name, "resourceVersion": "1"},
                                    "status": {"conditions": [
                                        {"type": "Established", "status": "True"},
                                        {"type": "NamesAccepted", "status": "True"}]}})
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        obj = self.body()
        ThrowawayApi.log.append(("POST", self.path))
        obj.setdefault("metadata", {})["resourceVersion"] = "1"
        obj["metadata"].setdefault("uid", "00000000-0000-0000-0000-000000000000")
        self.reply(201, obj)

    do_PUT = do_POST

    def do_PATCH(self):
        ThrowawayApi.log.append(("PATCH", self.path))
        self.body()
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404, "message": "not found"})

    def do_DELETE(self):
        ThrowawayApi.log.append(("DELETE", self.path))
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def kubeconfig(port):
    return f"""apiVersion: v1
kind: Config
clusters:
- name: throwaway
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: throwaway
  context: {{cluster: throwaway, user: nobody, namespace: {NAMESPACE}}}
current-context: throwaway
users:
- name: nobody
  user: {{token: not-a-real-token}}
"""


def plain_install(manifest: str) -> str:
    """The install without Helm: a Namespace, the CRD, then the default rendering."""
    crd = (CHART / "crds" / "clusterpullsecret.yaml").read_text()
    return (
        "# regbridge without Helm: the chart's default rendering (release `regbridge` in\n"
        "# namespace `regbridge`), preceded by the Namespace and the CRD.\n"
        "# Generated by tests/chart_render.py; tests/chart.rs keeps it in sync.\n"
        "#   kubectl apply -f deploy/manifests/regbridge.yaml\n"
        "---\n"
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
        "---\n"
        f"{crd.rstrip()}\n"
        f"{manifest.rstrip()}\n"
    )


async def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    # Helm's Go runtime copies the environment when the library loads.
    for d in ("cache", "config", "data"):
        os.environ[f"HELM_{d.upper()}_HOME"] = str(out / "helm" / d)
    import helm_sdkpy

    timings = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), ThrowawayApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kcfg = out / "kubeconfig"
    kcfg.write_text(kubeconfig(server.server_address[1]))

    t = time.monotonic()
    lint = await helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=str(kcfg))).run(str(CHART))
    timings["lint"] = round(time.monotonic() - t, 3)
    (out / "lint.json").write_text(json.dumps(lint, indent=2) + "\n")

    for name, values in (("default", None), ("custom", CUSTOM_VALUES), ("per-tenant", PER_TENANT_VALUES),
                         ("webhook-url", WEBHOOK_URL_VALUES)):
        t = time.monotonic()
        config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=str(kcfg))
        release = await helm_sdkpy.Install(config).run(RELEASE, str(CHART), values=values, wait=False, timeout=60)
        timings[name] = round(time.monotonic() - t, 3)
        manifest = release["manifest"]
        if name == "default":
            manifest = plain_install(manifest)
        (out / f"{name}.yaml").write_text(manifest if manifest.endswith("\n") else manifest + "\n")
        (out / f"{name}.values.json").write_text(json.dumps(values or {}, indent=2) + "\n")
    refused = {}
    for name, (values, expected) in REFUSED_VALUES.items():
        config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=str(kcfg))
        try:
            await helm_sdkpy.Install(config).run(RELEASE, str(CHART), values=values, wait=False, timeout=60)
            refused[name] = {"refused": False, "expected": expected}
        except Exception as e:  # noqa: BLE001 - helm-sdkpy raises its own error types
            refused[name] = {"refused": True, "expected": expected, "message": str(e)}
    (out / "refused.json").write_text(json.dumps(refused, indent=2) + "\n")
    server.shutdown()
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    (out / "requests.log").write_text("".join(f"{m} {p}\n" for m, p in ThrowawayApi.log))
    print(f"chart lint and renders in {out}: {timings}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    asyncio.run(main(Path(sys.argv[1])))
