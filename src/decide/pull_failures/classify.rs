//! What a kubelet `Failed` pull Event says: the image and the runtime's
//! error, sorted into authentication failures (which a new credential may
//! cure) and everything else, and sanitised for status.

use serde::{Deserialize, Serialize};

/// Why a registry refused a pull. Short, fixed texts: they go on status and
/// into Events, and cannot carry anything the registry said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthReason {
    /// The runtime sent no credentials for the host ("no basic auth
    /// credentials", or containerd's anonymous token request refused:
    /// containerd's `core/remotes/docker/authorizer.go` (`doBearerAuth`)
    /// asks for an anonymous token only when it holds no secret for the
    /// host, or after dropping one the registry refused with
    /// `insufficient_scope`).
    /// The commonest cause: the pod does not reference the managed Secret
    /// (its ServiceAccount is not selected, or the pod predates the patch).
    NoCredentials,
    /// 401 with credentials: wrong, revoked or expired.
    Unauthorized,
    /// The registry said the credential or token has expired (ECR).
    Expired,
    /// 403 or `denied`: the identity lacks access to the repository.
    Forbidden,
    /// Docker Hub's answer for a private repository *and* for one that does
    /// not exist: "pull access denied, repository does not exist or may
    /// require authorization" / "requested access to the resource is
    /// denied" / `insufficient_scope`. Counted (it is what a pod without
    /// the Secret sees, and what a credential without access sees), but the
    /// text says it may be a typo.
    DeniedOrMissing,
}

impl AuthReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCredentials => "no credentials sent: the pod may not reference the pull secret",
            Self::Unauthorized => "unauthorized (401): credential rejected",
            Self::Expired => "credential expired",
            Self::Forbidden => "forbidden (403): no access to the repository",
            Self::DeniedOrMissing => "access denied, or the repository does not exist",
        }
    }
}

impl std::fmt::Display for AuthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullErrorClass {
    AuthFailure {
        reason: AuthReason,
    },
    /// Manifest, tag or repository unknown: a wrong image name, not a
    /// credential problem.
    NotFound,
    /// DNS, TCP, TLS, timeouts, proxies: the node could not talk to the
    /// registry, whatever the credential.
    Network,
    /// Rate limits, disk, unpacking, anything else.
    Other,
}

/// The image and the runtime's error from a kubelet message of the form
/// `Failed to pull image "<image>": <error>` (kubelet
/// `pkg/kubelet/images/image_manager.go`). Other `Failed` Events
/// (`Error: ErrImagePull`, `Error: ImagePullBackOff`, container start
/// failures) give `None`.
pub fn parse_failed_pull(message: &str) -> Option<(String, &str)> {
    const PREFIX: &str = "failed to pull image \"";
    let head = message.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    // The image is Go-quoted (%q): read to the first unescaped quote.
    let rest = &message[PREFIX.len()..];
    let mut image = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => image.push(chars.next()?.1),
            '"' => {
                let error = rest[i + 1..].strip_prefix(':').unwrap_or(&rest[i + 1..]);
                return Some((image, error.trim()));
            }
            c => image.push(c),
        }
    }
    None
}

/// Classifies a runtime pull error (containerd, CRI-O, or dockershim's
/// daemon). The text is lower-cased and stripped of quoted strings, URLs
/// and anything with a `/` (image names, paths) first, so that an image
/// called `acme/denied` cannot look like a denial.
///
/// Precedence, each step justified by a sample in the tests:
/// 1. transport failures win, because Go errors put the root cause last
///    and containerd wraps even a DNS failure in "failed to authorize";
/// 2. rate limits are not auth failures, although Docker Hub's text
///    mentions authenticating;
/// 3. local `permission denied` (disk, unpack) is not a registry denial;
/// 4. auth markers, most specific first; Docker Hub's ambiguous denial
///    before generic 401/403, since its message carries those words too;
/// 5. not-found markers.
pub fn classify(runtime_error: &str) -> PullErrorClass {
    let text = words_only(runtime_error);
    let has = |m: &str| text.contains(m);
    let code = |n: &str| has_status_code(&text, n);

    const NETWORK: &[&str] = &[
        "dial tcp",
        "i/o timeout",
        "no such host",
        "connection refused",
        "connection reset",
        "connection timed out",
        "no route to host",
        "network is unreachable",
        "temporary failure in name resolution",
        "server misbehaving",
        "tls handshake",
        "x509:",
        "certificate signed by unknown authority",
        "context deadline exceeded",
        "deadline exceeded",
        "proxyconnect",
        "http response to https client",
        "unexpected eof",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway timeout",
    ];
    if NETWORK.iter().any(|m| has(m)) {
        return PullErrorClass::Network;
    }
    if has("toomanyrequests") || has("too many requests") || has("rate limit") || code("429") {
        return PullErrorClass::Other;
    }
    let text_without_local = text.replace("permission denied", "");
    let has_reg = |m: &str| text_without_local.contains(m);
    let auth = |reason| PullErrorClass::AuthFailure { reason };

    if has_reg("no basic auth credentials") {
        return auth(AuthReason::NoCredentials);
    }
    if has_reg("repository does not exist or may require")
        || has_reg("requested access to the resource is denied")
        || has_reg("insufficient_scope")
    {
        return auth(AuthReason::DeniedOrMissing);
    }
    let unauthorized = code("401")
        || has_reg("unauthorized")
        || has_reg("authentication required")
        || has_reg("not authorized")
        || has_reg("incorrect username or password")
        || has_reg("authentication failed");
    let forbidden = code("403") || has_reg("forbidden") || has_reg("denied");
    if has_reg("failed to fetch anonymous token") && (unauthorized || forbidden) {
        return auth(AuthReason::NoCredentials);
    }
    if has_reg("has expired") || has_reg("token expired") || has_reg("expired token") {
        return auth(AuthReason::Expired);
    }
    if unauthorized {
        return auth(AuthReason::Unauthorized);
    }
    if forbidden {
        return auth(AuthReason::Forbidden);
    }
    const NOT_FOUND: &[&str] = &[
        "not found",
        "manifest unknown",
        "name unknown",
        "does not exist",
        "no such image",
    ];
    if NOT_FOUND.iter().any(|m| has(m)) || code("404") {
        return PullErrorClass::NotFound;
    }
    PullErrorClass::Other
}

/// Lower case, without quoted strings and without whitespace-separated
/// tokens that hold a `/` (URLs, references, paths), except `i/o`.
fn words_only(s: &str) -> String {
    let lower = s.to_lowercase();
    let mut unquoted = String::with_capacity(lower.len());
    for (i, part) in lower.split('"').enumerate() {
        if i % 2 == 0 {
            unquoted.push_str(part);
        } else {
            unquoted.push(' ');
        }
    }
    unquoted
        .split_whitespace()
        .filter(|w| !w.contains('/') || w.trim_matches(|c: char| !c.is_alphanumeric()) == "i/o")
        .collect::<Vec<_>>()
        .join(" ")
}

/// `code` as a whole number: not part of a longer run of letters or digits
/// (a digest, an IP address, a byte count).
fn has_status_code(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + code.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() && c != '.');
        boundary(before) && boundary(after)
    })
}

/// Redacts what could be a secret in text meant for status: the userinfo of
/// any URL (`https://user:pass@host` becomes `https://***@host`, also
/// without a scheme when not a digest), and URL query strings (token
/// endpoints and signed blob URLs carry parameters). Truncates to `max`
/// characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let cleaned: Vec<String> = text.split(' ').map(sanitize_token).collect();
    bounded(&cleaned.join(" "), max)
}

/// At most `max` characters (not bytes, so never inside a UTF-8 sequence),
/// the last one `…` when something was cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
            out.push('…');
            out
        }
    }
}

fn sanitize_token(token: &str) -> String {
    let mut out = token.to_string();
    // Query strings of URLs.
    if let Some(q) = out.find('?').filter(|_| out.contains("://")) {
        let end = out[q..]
            .find(['"', '\'', ',', ')'])
            .map_or(out.len(), |e| q + e);
        out.replace_range(q..end, "?…");
    }
    // Userinfo: with a scheme, anything between :// and an @ before the
    // next /; without one, `x:y@host` unless what follows @ is a digest.
    let (start, authority_from) = match out.find("://") {
        Some(i) => (i + 3, i + 3),
        None => {
            let s = out.rfind(['"', '\'', '(', '=']).map_or(0, |i| i + 1);
            (s, s)
        }
    };
    let authority_end = out[authority_from..]
        .find('/')
        .map_or(out.len(), |i| authority_from + i);
    if let Some(at) = out[authority_from..authority_end].rfind('@') {
        let at = authority_from + at;
        let has_scheme = out.contains("://");
        let userinfo = &out[start..at];
        let after = &out[at + 1..];
        if has_scheme || (userinfo.contains(':') && !looks_like_digest(after)) {
            out.replace_range(start..at, "***");
        }
    }
    out
}

fn looks_like_digest(s: &str) -> bool {
    s.split_once(':').is_some_and(|(alg, hex)| {
        !alg.is_empty()
            && alg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
            && hex.len() >= 32
            && hex
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=_-".contains(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::pull_failures::DETAIL_MAX;
    use crate::decide::pull_failures::image_ref::ImageRef;

    use AuthReason::*;
    const NOT_FOUND: PullErrorClass = PullErrorClass::NotFound;
    const NETWORK: PullErrorClass = PullErrorClass::Network;
    const OTHER: PullErrorClass = PullErrorClass::Other;
    const fn auth(reason: AuthReason) -> PullErrorClass {
        PullErrorClass::AuthFailure { reason }
    }

    /// Whole kubelet Event messages, as users pasted them from
    /// `kubectl describe pod` into issues.
    const KUBELET_EVENTS: &[(&str, &str, &str, PullErrorClass)] = &[
        (
            // pfnet/image-pull-secrets-provisioner#31 (containerd; the image
            // does not exist: Docker Hub's ambiguous answer)
            "pfnet/image-pull-secrets-provisioner#31",
            r#"Failed to pull image "controller:latest": rpc error: code = Unknown desc = failed to pull and unpack image "docker.io/library/controller:latest": failed to resolve reference "docker.io/library/controller:latest": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"#,
            "controller:latest",
            auth(DeniedOrMissing),
        ),
        (
            // open-edge-platform/geti_v2#1668 (containerd 2.x, no rpc prefix;
            // private GHCR package, no credentials sent)
            "open-edge-platform/geti_v2#1668",
            r#"Failed to pull image "ghcr.io/open-edge-platform/geti/notifier:2.13.1": failed to pull and unpack image "ghcr.io/open-edge-platform/geti/notifier:2.13.1": failed to resolve reference "ghcr.io/open-edge-platform/geti/notifier:2.13.1": failed to authorize: failed to fetch anonymous token: unexpected status from GET request to https://ghcr.io/token?scope=repository%3Aopen-edge-platform%2Fgeti%2Fnotifier%3Apull&service=ghcr.io: 401 Unauthorized"#,
            "ghcr.io/open-edge-platform/geti/notifier:2.13.1",
            auth(NoCredentials),
        ),
        (
            // kubescape/kubescape#531 (dockershim)
            "kubescape/kubescape#531 (DNS)",
            r#"Failed to pull image "quay.io/armosec/kubescape:v2.0.156": rpc error: code = Unknown desc = Error response from daemon: Get "https://quay.io/v2/": dial tcp: lookup quay.io on 192.168.65.2:53: no such host"#,
            "quay.io/armosec/kubescape:v2.0.156",
            NETWORK,
        ),
        (
            // kubescape/kubescape#531 (dockershim; a timeout on the token
            // endpoint is still a network failure)
            "kubescape/kubescape#531 (timeout)",
            r#"Failed to pull image "quay.io/armosec/kubescape:v2.0.156": rpc error: code = Unknown desc = Error response from daemon: Head "https://quay.io/v2/armosec/kubescape/manifests/v2.0.156": Get "https://quay.io/v2/auth?scope=repository%3Aarmosec%2Fkubescape%3Apull&service=quay.io": context deadline exceeded"#,
            "quay.io/armosec/kubescape:v2.0.156",
            NETWORK,
        ),
        (
            // Kubeinit/kubeinit#633 (CRI-O)
            "Kubeinit/kubeinit#633",
            r#"Failed to pull image "quay.io/bitnami/nginx:latest": rpc error: code = Unknown desc = pinging container registry quay.io: Get "https://quay.io/v2/": dial tcp 34.225.41.113:443: connect: no route to host"#,
            "quay.io/bitnami/nginx:latest",
            NETWORK,
        ),
        (
            // rhdemo/2019-demo4-optaplanner#19 (CRI-O on OpenShift 4;
            // Docker Hub's ambiguous denial, with "unauthorized" alongside)
            "rhdemo/2019-demo4-optaplanner#19",
            "Failed to pull image \"optaplanner/optaplanner-demo:snapshot-190326-101059-0997\": rpc error: code = Unknown desc = Error reading manifest snapshot-190326-101059-0997 in docker.io/optaplanner/optaplanner-demo: errors:\ndenied: requested access to the resource is denied\nunauthorized: authentication required",
            "optaplanner/optaplanner-demo:snapshot-190326-101059-0997",
            auth(DeniedOrMissing),
        ),
        (
            // kubernetes/kubernetes#83348 (dockershim, ECR)
            "kubernetes/kubernetes#83348",
            r#"Failed to pull image "XXXXXXXX.dkr.ecr.ap-XXXXXX.amazonaws.com/isam:9.0.7.0": rpc error: code = Unknown desc = Error response from daemon: Get https://XXXXXXX.dkr.ecr.ap-XXXXX.amazonaws.com/v2/ndi-spcp-isam/manifests/9.0.7.0: no basic auth credentials"#,
            "XXXXXXXX.dkr.ecr.ap-XXXXXX.amazonaws.com/isam:9.0.7.0",
            auth(NoCredentials),
        ),
        (
            // kubesphere/ks-installer#115 (dockershim, private registry)
            "kubesphere/ks-installer#115",
            r#"Failed to pull image "dockerhub.qingcloud.com/coreos/etcd:v3.2.18": rpc error: code = Unknown desc = Error response from daemon: Get https://dockerhub.qingcloud.com/v2/coreos/etcd/manifests/v3.2.18: unauthorized: authentication required"#,
            "dockerhub.qingcloud.com/coreos/etcd:v3.2.18",
            auth(Unauthorized),
        ),
        (
            // lachie83/k8s-kubectl#157 (dockershim)
            "lachie83/k8s-kubectl#157",
            r#"Failed to pull image "lachlanevenson/k8s-kubectl:v1.18.20": rpc error: code = Unknown desc = Error response from daemon: manifest for lachlanevenson/k8s-kubectl:v1.18.20 not found: manifest unknown: manifest unknown"#,
            "lachlanevenson/k8s-kubectl:v1.18.20",
            NOT_FOUND,
        ),
        (
            // openshift-labs/learn-katacoda#1275 (old gRPC code form)
            "openshift-labs/learn-katacoda#1275",
            r#"Failed to pull image "openshift3/mysql-55-rhel7": rpc error: code = 2 desc = unauthorized: authentication required"#,
            "openshift3/mysql-55-rhel7",
            auth(Unauthorized),
        ),
        (
            // kubernetes/minikube#20613 (docker runtime)
            "kubernetes/minikube#20613",
            r#"Failed to pull image "suedostcargo-web": Error response from daemon: pull access denied for suedostcargo-web, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"#,
            "suedostcargo-web",
            auth(DeniedOrMissing),
        ),
    ];

    /// Runtime errors from runtime logs, crictl, ctr or clients built on the
    /// same resolver code; the kubelet puts exactly this text after
    /// `Failed to pull image "...": `.
    const RUNTIME_ERRORS: &[(&str, &str, PullErrorClass)] = &[
        (
            // kubernetes-sigs/provider-aws-test-infra#281 (containerd log)
            "kubernetes-sigs/provider-aws-test-infra#281",
            r#"rpc error: code = NotFound desc = failed to pull and unpack image "registry.k8s.io/kube-apiserver-amd64:v1.30.0-alpha.1.107_052bce26f4f48b": failed to resolve reference "registry.k8s.io/kube-apiserver-amd64:v1.30.0-alpha.1.107_052bce26f4f48b": registry.k8s.io/kube-apiserver-amd64:v1.30.0-alpha.1.107_052bce26f4f48b: not found"#,
            NOT_FOUND,
        ),
        (
            // kubernetes/kubeadm#2936 (containerd via crictl)
            "kubernetes/kubeadm#2936",
            r#"rpc error: code = Unknown desc = failed to pull and unpack image "registry.k8s.io/kube-proxy:v1.28.2": failed to resolve reference "registry.k8s.io/kube-proxy:v1.28.2": failed to do request: Head "https://registry.k8s.io/v2/kube-proxy/manifests/v1.28.2": dial tcp 34.96.108.209:443: connect: connection timed out"#,
            NETWORK,
        ),
        (
            // ciiiii/cloudflare-docker-proxy#62 (containerd log): "failed to
            // authorize" wrapping an i/o timeout is a network failure
            "ciiiii/cloudflare-docker-proxy#62",
            r#"rpc error: code = DeadlineExceeded desc = failed to pull and unpack image "docker.io/library/redis:latest": failed to resolve reference "docker.io/library/redis:latest": failed to authorize: failed to fetch anonymous token: Get "https://auth.docker.io/token?scope=repository%!A(MISSING)library%!F(MISSING)redis%!A(MISSING)pull&service=registry.docker.io": dial tcp 108.160.165.48:443: i/o timeout"#,
            NETWORK,
        ),
        (
            // ketches/registry-proxy#3 (ctr): the same without the gRPC prefix
            "ketches/registry-proxy#3",
            r#"failed to resolve reference "docker.ketches.cn/library/nginx:latest": failed to authorize: failed to fetch anonymous token: Get "https://auth.docker.io/token?scope=repository%3Alibrary%2Fnginx%3Apull&service=registry.docker.io": dial tcp 199.59.148.222:443: i/o timeout"#,
            NETWORK,
        ),
        (
            // kubernetes/kops#16762 (containerd via kubelet log, ECR)
            "kubernetes/kops#16762",
            r#"failed to resolve reference "123456789101.dkr.ecr.ap-southeast-2.amazonaws.com/k8s-example/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097": pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials"#,
            auth(NoCredentials),
        ),
        (
            // containerd/containerd#11103 (title; Harbor)
            "containerd/containerd#11103",
            "pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials",
            auth(NoCredentials),
        ),
        (
            // gitpod-io/gitpod#14837 (containerd, credentials sent)
            "gitpod-io/gitpod#14837",
            r#""proxy.replicated.com/proxy/gitpod/busybox:1": failed to resolve reference "proxy.replicated.com/proxy/gitpod/busybox:1": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized"#,
            auth(Unauthorized),
        ),
        (
            // docker-library/tomcat#321 (containerd resolver, anonymous)
            "docker-library/tomcat#321",
            "amazoncorretto:11-al2-jdk: failed to authorize: failed to fetch anonymous token: unexpected status: 401",
            auth(NoCredentials),
        ),
        (
            // okd-project/okd#2194 (CRI-O via kubelet log)
            "okd-project/okd#2194",
            "rpc error: code = Unknown desc = initializing source docker://quay.io/okd/scos-content@sha256:637140d5811ea5f3ebbf1f0185ef4e98085236684337f2aabc4fa6bbffe1b305: reading manifest sha256:637140d5811ea5f3ebbf1f0185ef4e98085236684337f2aabc4fa6bbffe1b305 in quay.io/okd/scos-content: manifest unknown",
            NOT_FOUND,
        ),
        (
            // stolostron/deploy#6 (CRI-O, Quay)
            "stolostron/deploy#6",
            "Error reading manifest 1.0.0-SNAPSHOT-2020-03-12-18-56-25 in quay.io/open-cluster-management/multiclusterhub-operator-index: unauthorized: access to the requested resource is not authorized",
            auth(Unauthorized),
        ),
        (
            // cri-o/cri-o#7007 (CRI-O via crictl)
            "cri-o/cri-o#7007",
            "rpc error: code = Unknown desc = Requesting bearer token: invalid status code from registry 403 (Forbidden)",
            auth(Forbidden),
        ),
        (
            // cri-o/cri-o#4388 (CRI-O via crictl)
            "cri-o/cri-o#4388",
            "rpc error: code = Unknown desc = Error reading manifest latest in registry.mydomain/image: manifest unknown: manifest unknown",
            NOT_FOUND,
        ),
        (
            // cri-o/cri-o#2331, a comment (CRI-O behind a proxy)
            "cri-o/cri-o#2331",
            r#"rpc error: code = Unknown desc = error pinging docker registry registry-1.docker.io: Get "https://registry-1.docker.io/v2/": proxyconnect tcp: dial tcp: lookup http: Temporary failure in name resolution"#,
            NETWORK,
        ),
        (
            // LeoMartinDev/voy#3 (containerd resolver inside dockerd, GHCR)
            "LeoMartinDev/voy#3",
            r#"failed to resolve reference "ghcr.io/leomartindev/voy:latest": unexpected status from HEAD request to https://ghcr.io/v2/leomartindev/voy/manifests/latest: 403 Forbidden"#,
            auth(Forbidden),
        ),
        (
            // kubernetes/kubernetes#93556, a comment (untrusted registry CA)
            "kubernetes/kubernetes#93556",
            "Get https://bi.docker.oraclecorp.com/v2/: x509: certificate signed by unknown authority",
            NETWORK,
        ),
    ];

    #[test]
    fn real_kubelet_messages_are_parsed_and_classified() {
        for (source, message, image, expected) in KUBELET_EVENTS {
            let (got_image, error) = parse_failed_pull(message)
                .unwrap_or_else(|| panic!("{source}: not parsed as a failed pull"));
            assert_eq!(&got_image, image, "{source}");
            assert!(
                ImageRef::parse(&got_image).is_ok(),
                "{source}: image parses"
            );
            assert_eq!(classify(error), *expected, "{source}");
        }
    }

    #[test]
    fn real_runtime_errors_are_classified() {
        for (source, error, expected) in RUNTIME_ERRORS {
            assert_eq!(classify(error), *expected, "{source}");
        }
        assert!(KUBELET_EVENTS.len() + RUNTIME_ERRORS.len() >= 15);
    }

    #[test]
    fn not_found_is_not_counted() {
        assert!(!matches!(
            classify("failed to resolve reference \"r.io/a:1\": r.io/a:1: not found"),
            PullErrorClass::AuthFailure { .. }
        ));
    }

    #[test]
    fn network_failures_are_not_counted_even_inside_failed_to_authorize() {
        let e = "failed to authorize: failed to fetch oauth token: Post \"https://r.io/token\": dial tcp 10.0.0.1:443: connect: connection refused";
        assert_eq!(classify(e), NETWORK);
    }

    #[test]
    fn words_in_image_names_do_not_classify() {
        // Constructed: a repository named "unauthorized" that does not exist.
        let e = r#"rpc error: code = NotFound desc = failed to pull and unpack image "reg.example.com/acme/unauthorized:1": failed to resolve reference "reg.example.com/acme/unauthorized:1": reg.example.com/acme/unauthorized:1: not found"#;
        assert_eq!(classify(e), NOT_FOUND);
    }

    #[test]
    fn local_permission_denied_is_not_a_registry_denial() {
        // Constructed: an unpack failure on the node.
        let e = "failed to extract layer sha256:0123: mkdir /var/lib/containerd/tmpmounts/x: permission denied";
        assert_eq!(classify(e), OTHER);
    }

    #[test]
    fn rate_limits_are_not_auth_failures() {
        // Constructed after Docker Hub's rate-limit text, which mentions
        // authenticating.
        let e = "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading";
        assert_eq!(classify(e), OTHER);
    }

    #[test]
    fn expired_token_is_its_own_reason() {
        // Constructed after ECR's answer to an expired token.
        let e = "unexpected status from HEAD request: 403 Forbidden: denied: Your authorization token has expired. Reauthenticate and try again.";
        assert_eq!(classify(e), auth(Expired));
    }

    #[test]
    fn status_codes_count_only_as_whole_numbers() {
        assert!(has_status_code(
            "unexpected status: 401 unauthorized",
            "401"
        ));
        assert!(has_status_code("registry 403 (forbidden)", "403"));
        assert!(!has_status_code("sha256:ab401cd", "401"));
        assert!(!has_status_code("size 14015", "401"));
        assert!(!has_status_code("10.0.40.1", "401"));
    }

    #[test]
    fn other_failed_events_are_not_pull_messages() {
        assert_eq!(parse_failed_pull("Error: ErrImagePull"), None);
        assert_eq!(parse_failed_pull("Error: ImagePullBackOff"), None);
        assert_eq!(
            parse_failed_pull("Failed to pull image \"unterminated"),
            None
        );
    }

    #[test]
    fn go_quoted_image_is_unescaped() {
        let (image, error) = parse_failed_pull(r#"Failed to pull image "a\"b": boom"#).unwrap();
        assert_eq!((image.as_str(), error), ("a\"b", "boom"));
    }

    #[test]
    fn userinfo_in_urls_is_redacted() {
        let s = sanitize(
            "Get \"https://bob:hunter2@reg.example.com/v2/\": 401 Unauthorized",
            DETAIL_MAX,
        );
        assert!(!s.contains("hunter2") && !s.contains("bob"), "{s}");
        assert!(s.contains("https://***@reg.example.com/v2/"), "{s}");
        let s = sanitize(
            "pulling bob:hunter2@reg.example.com:5000/app failed",
            DETAIL_MAX,
        );
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn query_strings_are_dropped_from_urls() {
        let s = sanitize(
            "GET https://r.example/token?service=r&account=bob&X-Amz-Signature=abc: 401",
            DETAIL_MAX,
        );
        assert!(!s.contains("Signature") && !s.contains("account"), "{s}");
        assert!(s.contains("https://r.example/token?…"), "{s}");
    }

    #[test]
    fn digests_are_not_mistaken_for_userinfo() {
        let text = format!("reading manifest in quay.io/a@sha256:{}", "c".repeat(64));
        assert_eq!(sanitize(&text, DETAIL_MAX), text);
        let text = format!("nginx:1.2@sha256:{}", "d".repeat(64));
        assert_eq!(sanitize(&text, DETAIL_MAX), text);
    }

    #[test]
    fn long_details_are_truncated() {
        let s = sanitize(&"x".repeat(1000), 50);
        assert_eq!(s.chars().count(), 50);
        assert!(s.ends_with('…'));
    }
}
