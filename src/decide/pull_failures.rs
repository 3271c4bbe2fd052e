//! Pull failures fed back to the resource (issue 6, section 2): which of the
//! kubelet's `Failed` pull Events are authentication failures on a registry
//! that a `ClusterPullSecret` serves, and what goes on its status.
//!
//! Pure: the controller feeds Events from its watch and the resources'
//! selection results and composed hosts; this module decides. Nothing here
//! sees a credential, and everything it returns is safe to show on status.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use regbridge_providers::registry::key::{self, Location};

use crate::api::crd::{PullFailureStatus, rfc3339};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PullFailureError {
    #[error("image reference {image:?}: {why}")]
    BadImage { image: String, why: &'static str },
}

// ---------------------------------------------------------------------------
// Image references
// ---------------------------------------------------------------------------

/// Docker Hub's canonical domain after normalisation.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";

/// An image reference normalised the way containerd, CRI-O and the kubelet
/// do it (distribution's `ParseNormalizedNamed`): `nginx` is
/// `docker.io/library/nginx`, `index.docker.io` is `docker.io`, and a first
/// component is a registry only when it holds a `.` or a `:`, is
/// `localhost`, or has upper case letters.
///
/// A small parser rather than a crate: the one maintained candidate
/// (`oci-spec`'s `distribution::Reference`) brings regex and derive_builder
/// for what is forty lines here, and we need only the domain and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path without tag or digest, e.g. `library/nginx`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<Self, PullFailureError> {
        let bad = |why| PullFailureError::BadImage {
            image: image.to_string(),
            why,
        };
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(bad("empty or contains whitespace"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) if d.contains(':') => (n, Some(d.to_string())),
            Some(_) => return Err(bad("digest must be algorithm:hex")),
            None => (image, None),
        };
        let (domain, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB_DOMAIN, name),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB_DOMAIN
        } else {
            domain
        };
        let last_slash = remainder.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match remainder[last_slash..].rfind(':') {
            Some(i) => (
                &remainder[..last_slash + i],
                Some(remainder[last_slash + i + 1..].to_string()),
            ),
            None => (remainder, None),
        };
        if tag.as_deref() == Some("") {
            return Err(bad("empty tag"));
        }
        if path.is_empty() || path.split('/').any(str::is_empty) {
            return Err(bad("empty path component"));
        }
        if !path
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(bad(
                "repository must be lower case letters, digits and . _ -",
            ));
        }
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(bad("invalid registry host"));
        }
        let path = if domain == DOCKER_HUB_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(Self {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`: what the kubelet hands its keyring (`repoToPull`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

// ---------------------------------------------------------------------------
// kubelet's keyring matching
// ---------------------------------------------------------------------------

/// Whether kubelet would use the dockerconfigjson entry `keys[i]` for
/// `image`; returns the key it would try first.
///
/// Follows kubernetes `pkg/credentialprovider/keyring.go`
/// (`BasicDockerKeyring.Add`/`Lookup`, `URLsMatch`, `ParseSchemelessURL`,
/// `SplitURL`, `isDefaultRegistryMatch`; v1.35), which the kubelet calls
/// with the normalised repository name (`pkg/util/parsers.ParseImageName`):
/// - a key loses its scheme and a leading `/v1/` or `/v2/`; a remaining
///   path of `/` is no path, so `https://index.docker.io/v1/` is
///   `index.docker.io`;
/// - the image's host must have as many dot-separated labels as the key's,
///   each matching the key's label as a glob (`*.dkr.ecr.*.amazonaws.com`);
/// - the ports must be equal (both absent counts as equal);
/// - the key's path must be a prefix of the image's path. kubelet compares
///   strings, not segments: `reg.example/team` also serves
///   `reg.example/teamx/app`. We follow kubelet, since the question is what
///   kubelet would have sent;
/// - keys are tried most specific first (reverse lexical order);
/// - when nothing matched, an `index.docker.io` key serves Docker Hub images,
///   which are named `docker.io/...` and so never match it by label count.
pub fn matching_key<'a>(image: &str, keys: &'a [String]) -> Option<&'a str> {
    let target = ImageRef::parse(image).ok()?;
    let target_name = target.name();
    let target_url = Location::parse(&target_name);
    let mut normalised: Vec<(String, &'a str)> = keys
        .iter()
        .filter_map(|k| key::normalize(k).map(|n| (n, k.as_str())))
        .collect();
    // Stable, so of two keys that normalise alike the first listed wins.
    normalised.sort_by(|a, b| b.0.cmp(&a.0));
    normalised
        .iter()
        .find(|(n, _)| urls_match(&Location::parse(n), &target_url))
        .or_else(|| {
            (target.domain == DOCKER_HUB_DOMAIN)
                .then(|| normalised.iter().find(|(n, _)| n == "index.docker.io"))
                .flatten()
        })
        .map(|(_, original)| *original)
}

fn urls_match(glob: &Location<'_>, target: &Location<'_>) -> bool {
    let (glob_labels, glob_port) = glob.labels_and_port();
    let (target_labels, target_port) = target.labels_and_port();
    glob_port == target_port
        && glob_labels.len() == target_labels.len()
        && target.path.starts_with(glob.path)
        && glob_labels
            .iter()
            .zip(&target_labels)
            .all(|(g, t)| glob_match(g, t) == Some(true))
}

/// Go's `path/filepath.Match` for one host label: `*`, `?`, `[...]` with
/// ranges and `^`, and `\` escapes. `None` for a malformed pattern, which
/// kubelet treats as no match.
fn glob_match(pattern: &str, text: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_chars(&p, &t)
}

fn glob_chars(p: &[char], t: &[char]) -> Option<bool> {
    match p.first() {
        None => Some(t.is_empty()),
        Some('*') => {
            for i in 0..=t.len() {
                if glob_chars(&p[1..], &t[i..])? {
                    return Some(true);
                }
            }
            Some(false)
        }
        Some('?') => match t.split_first() {
            Some((_, rest)) => glob_chars(&p[1..], rest),
            None => Some(false),
        },
        Some('[') => {
            let (used, hit) = class_match(&p[1..], t.first().copied())?;
            match t.split_first() {
                Some((_, rest)) if hit => glob_chars(&p[1 + used..], rest),
                _ => Some(false),
            }
        }
        Some('\\') => {
            let c = p.get(1)?;
            match t.split_first() {
                Some((x, rest)) if x == c => glob_chars(&p[2..], rest),
                _ => Some(false),
            }
        }
        Some(c) => match t.split_first() {
            Some((x, rest)) if x == c => glob_chars(&p[1..], rest),
            _ => Some(false),
        },
    }
}

/// A `[...]` class after its `[`: how many pattern chars it used (through
/// the `]`), and whether `c` is in it.
fn class_match(p: &[char], c: Option<char>) -> Option<(usize, bool)> {
    let negate = p.first() == Some(&'^');
    let mut i = usize::from(negate);
    let mut hit = false;
    let mut ranges = 0;
    loop {
        match p.get(i) {
            None => return None,
            Some(']') if ranges > 0 => {
                i += 1;
                break;
            }
            _ => {}
        }
        let (lo, used) = class_char(&p[i..])?;
        i += used;
        let hi = if p.get(i) == Some(&'-') {
            let (hi, used) = class_char(&p[i + 1..])?;
            i += 1 + used;
            hi
        } else {
            lo
        };
        hit |= c.is_some_and(|c| lo <= c && c <= hi);
        ranges += 1;
    }
    Some((i, hit != negate))
}

fn class_char(p: &[char]) -> Option<(char, usize)> {
    match p.first()? {
        '-' | ']' => None,
        '\\' => p.get(1).map(|c| (*c, 2)),
        c => Some((*c, 1)),
    }
}

// ---------------------------------------------------------------------------
// Classification of the kubelet's Event message
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------

/// What the controller reads off one core/v1 Event (already filtered
/// server-side to `involvedObject.kind=Pod,type=Warning,reason=Failed`).
#[derive(Clone, Copy, Debug)]
pub struct PullEvent<'a> {
    pub namespace: &'a str,
    /// `involvedObject.name`.
    pub pod: &'a str,
    pub message: &'a str,
    /// See [`event_time`].
    pub time: DateTime<Utc>,
    /// `reportingComponent` (`reportingController` in Go).
    pub reporting_component: Option<&'a str>,
    /// `source.component`, the legacy field.
    pub source_component: Option<&'a str>,
}

/// The name the kubelet reports its Events under.
pub const KUBELET: &str = "kubelet";

/// Whether the kubelet reported the Event. Any account allowed to create
/// Events in a namespace can write a `Failed` Event whose message looks
/// like a failed pull; only the kubelet's count.
///
/// The kubelet records core/v1 Events through client-go's
/// `tools/record` recorder, built with `EventSource{Component: "kubelet",
/// Host: <node>}` (`cmd/kubelet/app/server.go`, `componentKubelet`).
/// `recorderImpl.generateEvent` (client-go `tools/record/event.go`) sets
/// `event.Source = recorder.source`, `ReportingController =
/// source.Component` and `ReportingInstance = source.Host`: so a real
/// kubelet Event carries `reportingComponent: kubelet` and
/// `source.component: kubelet` (also seen on a kube-apiserver 1.36
/// cluster). `reportingComponent` decides when set; an Event from a
/// recorder too old to set it falls back on `source.component`.
///
/// This keeps out Events from other components and naive fakes. It is no
/// authentication: the API server does not check either field, so who may
/// create Events in a selected namespace still matters. What a fake can
/// still do is bounded: one re-mint of the one entry serving the host per
/// minute, and capped, truncated entries on status.
pub fn reported_by_kubelet(
    reporting_component: Option<&str>,
    source_component: Option<&str>,
) -> bool {
    match reporting_component.filter(|c| !c.is_empty()) {
        Some(reporter) => reporter == KUBELET,
        None => source_component == Some(KUBELET),
    }
}

/// One `ClusterPullSecret` as the decision needs it.
#[derive(Clone, Copy, Debug)]
pub struct ResourceView<'a> {
    pub name: &'a str,
    /// `Selection::selects_namespace` for the Event's namespace.
    pub selects_namespace: bool,
    /// The keys of its composed dockerconfigjson (`ComposedHost::host`).
    pub keys: &'a [String],
}

/// One entry of `status.pullFailures`. No credential can be in it: the
/// reason is a fixed text, and the image and detail are sanitised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullFailure {
    pub namespace: String,
    pub pod: String,
    pub image: String,
    /// The dockerconfigjson key kubelet would have used: the same name the
    /// status lists the host under, and what recovery re-mints.
    pub host: String,
    pub time: DateTime<Utc>,
    /// Short, fixed: [`AuthReason::as_str`].
    pub reason: String,
    /// The runtime's error, sanitised and truncated, for the log and the
    /// Event; status may show it.
    pub detail: String,
    /// The likeliest cause, when the controller can tell (filled in by the
    /// I/O layer, which can read the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
}

/// A counted failure, attributed to one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution<'r> {
    pub resource: &'r str,
    pub auth_reason: AuthReason,
    pub failure: PullFailure,
}

/// Why an Event did not count; for debug logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not reported by the kubelet: see [`reported_by_kubelet`].
    NotKubelet,
    /// Not a "Failed to pull image" message.
    NotAPull,
    /// The image in the message does not parse.
    BadImage,
    /// Not an authentication failure.
    NotAuth(PullErrorClass),
    /// No resource selects the namespace and serves the image's registry.
    NotServed,
}

/// Longest runtime error kept in [`PullFailure::detail`], and longest image
/// reference kept.
pub const DETAIL_MAX: usize = 300;
/// Longest namespace, pod name or host kept: the longest object name the
/// API server accepts (a DNS subdomain). An Event is free text, and its
/// `involvedObject.name` is not checked against any pod: a longer name is
/// cut, so that twenty of them cannot push the status patch over its size
/// limit.
pub const NAME_MAX: usize = 253;

/// Decides which resources a kubelet `Failed` Event counts for. It counts
/// for every resource that selects the namespace and whose Secret has a key
/// kubelet would use for the image, when the kubelet reported it and the
/// error is an auth failure. Every text it keeps is bounded.
pub fn attribute<'r>(
    event: &PullEvent<'_>,
    resources: &[ResourceView<'r>],
) -> Result<Vec<Attribution<'r>>, Ignored> {
    if !reported_by_kubelet(event.reporting_component, event.source_component) {
        return Err(Ignored::NotKubelet);
    }
    let (image, error) = parse_failed_pull(event.message).ok_or(Ignored::NotAPull)?;
    ImageRef::parse(&image).map_err(|_| Ignored::BadImage)?;
    let reason = match classify(error) {
        PullErrorClass::AuthFailure { reason } => reason,
        other => return Err(Ignored::NotAuth(other)),
    };
    let counted: Vec<Attribution<'r>> = resources
        .iter()
        .filter(|r| r.selects_namespace)
        .filter_map(|r| {
            let host = matching_key(&image, r.keys)?;
            Some(Attribution {
                resource: r.name,
                auth_reason: reason,
                failure: PullFailure {
                    namespace: bounded(event.namespace, NAME_MAX),
                    pod: bounded(event.pod, NAME_MAX),
                    image: sanitize(&image, DETAIL_MAX),
                    host: bounded(host, NAME_MAX),
                    time: event.time,
                    reason: reason.as_str().to_string(),
                    detail: sanitize(error, DETAIL_MAX),
                    diagnosis: None,
                },
            })
        })
        .collect();
    if counted.is_empty() {
        Err(Ignored::NotServed)
    } else {
        Ok(counted)
    }
}

/// The Event's time: `lastTimestamp` (the deprecated core/v1 field the
/// kubelet's recorder still sets on every repeat), else `eventTime` (events
/// API), else `firstTimestamp`, else now.
pub fn event_time(
    last_timestamp: Option<DateTime<Utc>>,
    event_time: Option<DateTime<Utc>>,
    first_timestamp: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    last_timestamp
        .or(event_time)
        .or(first_timestamp)
        .unwrap_or(now)
}

// ---------------------------------------------------------------------------
// Recovery gating
// ---------------------------------------------------------------------------

/// How often an auth failure may trigger a re-mint of one host.
pub const REMINT_INTERVAL: Duration = Duration::minutes(1);

/// Whether a re-mint may start now, given when the last one was triggered.
pub fn remint_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>, interval: Duration) -> bool {
    last.is_none_or(|t| now - t >= interval || now < t)
}

/// Last re-mint trigger per (resource, host), so that a burst of failing
/// pods costs one mint per host per interval. Kept in the `Context`.
#[derive(Debug)]
pub struct RemintGate {
    interval: Duration,
    last: HashMap<(String, String), DateTime<Utc>>,
}

impl RemintGate {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// True, and records `now`, when the host may be re-minted. Forgets
    /// entries older than the interval, so the map stays as small as the
    /// set of hosts failing right now.
    pub fn try_trigger(&mut self, resource: &str, host: &str, now: DateTime<Utc>) -> bool {
        let interval = self.interval;
        self.last
            .retain(|_, t| !remint_due(Some(*t), now, interval));
        let key = (resource.to_string(), host.to_string());
        if remint_due(self.last.get(&key).copied(), now, interval) {
            self.last.insert(key, now);
            true
        } else {
            false
        }
    }
}

impl Default for RemintGate {
    fn default() -> Self {
        Self::new(REMINT_INTERVAL)
    }
}

// ---------------------------------------------------------------------------
// The capped list on status
// ---------------------------------------------------------------------------

/// How many failures `status.pullFailures` keeps.
pub const PULL_FAILURES_CAP: usize = 20;

/// `status.pullFailures` and its count: newest first, at most `cap`
/// entries, one per (namespace, pod, image).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullFailureLog {
    /// Failures seen since the resource was created (or the controller
    /// started, if status was lost).
    pub total: u64,
    pub recent: VecDeque<PullFailure>,
}

impl PullFailureLog {
    /// Records a failure. The kubelet repeats the same Event with a new
    /// `lastTimestamp` on every retry: each repeat counts and moves the
    /// entry to the front. A watch relist redelivers Events unchanged: an
    /// entry with the same time is not counted again. Returns whether
    /// anything changed, so that status is written only then.
    pub fn record(&mut self, failure: PullFailure, cap: usize) -> bool {
        let same_pull = |f: &PullFailure| {
            f.namespace == failure.namespace && f.pod == failure.pod && f.image == failure.image
        };
        if let Some(i) = self.recent.iter().position(same_pull) {
            if self.recent[i].time >= failure.time {
                return false;
            }
            self.recent.remove(i);
        }
        self.total += 1;
        let at = self
            .recent
            .iter()
            .position(|f| f.time <= failure.time)
            .unwrap_or(self.recent.len());
        self.recent.insert(at, failure);
        self.recent.truncate(cap);
        true
    }
}

impl From<&PullFailure> for PullFailureStatus {
    fn from(f: &PullFailure) -> Self {
        Self {
            namespace: f.namespace.clone(),
            pod: f.pod.clone(),
            image: f.image.clone(),
            host: f.host.clone(),
            time: rfc3339(f.time),
            reason: f.reason.clone(),
            detail: f.detail.clone(),
            diagnosis: f.diagnosis.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    // --- image references -------------------------------------------------

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(
            ImageRef::parse("user/app:1").unwrap().name(),
            "docker.io/user/app"
        );
        assert_eq!(
            ImageRef::parse("docker.io/nginx").unwrap().name(),
            "docker.io/library/nginx"
        );
        assert_eq!(
            ImageRef::parse("index.docker.io/user/app").unwrap().name(),
            "docker.io/user/app"
        );
    }

    #[test]
    fn first_component_is_a_registry_only_with_dot_colon_localhost_or_upper_case() {
        assert_eq!(
            ImageRef::parse("localhost/app").unwrap().domain,
            "localhost"
        );
        assert_eq!(
            ImageRef::parse("localhost:5000/a/b:t").unwrap().domain,
            "localhost:5000"
        );
        assert_eq!(
            ImageRef::parse("reg.example/a").unwrap().domain,
            "reg.example"
        );
        assert_eq!(ImageRef::parse("Reg/a").unwrap().domain, "Reg");
        assert_eq!(ImageRef::parse("team/a").unwrap().domain, "docker.io");
    }

    #[test]
    fn tags_and_digests_are_split_off_the_path() {
        let r = ImageRef::parse("reg.example:5000/team/app:1.2").unwrap();
        assert_eq!(r.domain, "reg.example:5000");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("reg.example/app:1@{d}")).unwrap();
        assert_eq!((r.path.as_str(), r.tag.as_deref()), ("app", Some("1")));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "a b",
            "docker.io/Nginx",
            "reg.example/",
            "reg.example//a",
            "app:",
            "a@nodigest",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    // --- kubelet's keyring matching ----------------------------------------

    #[test]
    fn docker_hub_short_name_matches_index_docker_io_key() {
        let k = keys(&["https://index.docker.io/v1/"]);
        assert_eq!(
            matching_key("nginx", &k),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(
            matching_key("docker.io/user/app:1", &k),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(matching_key("quay.io/user/app", &k), None);
    }

    #[test]
    fn docker_io_key_matches_hub_images_directly() {
        let k = keys(&["docker.io"]);
        assert_eq!(matching_key("library/nginx", &k), Some("docker.io"));
    }

    #[test]
    fn hub_fallback_applies_only_when_nothing_else_matched() {
        let k = keys(&["https://index.docker.io/v1/", "docker.io/team"]);
        assert_eq!(matching_key("team/app", &k), Some("docker.io/team"));
        assert_eq!(
            matching_key("other/app", &k),
            Some("https://index.docker.io/v1/")
        );
    }

    #[test]
    fn index_docker_io_v1_without_trailing_slash_is_a_path_as_in_kubelet() {
        // kubelet strips "/v1/" only with its trailing slash; "/v1" stays a
        // path and no Docker Hub image starts with it.
        assert_eq!(
            key::normalize("index.docker.io/v1").as_deref(),
            Some("index.docker.io/v1")
        );
        assert_eq!(matching_key("nginx", &keys(&["index.docker.io/v1"])), None);
    }

    #[test]
    fn registry_1_docker_io_key_does_not_serve_hub_images() {
        assert_eq!(
            matching_key("nginx", &keys(&["registry-1.docker.io"])),
            None
        );
    }

    #[test]
    fn scheme_and_v2_prefix_are_dropped_from_keys() {
        assert_eq!(
            key::normalize("https://reg.example/v2/").as_deref(),
            Some("reg.example")
        );
        assert_eq!(
            key::normalize("http://reg.example/v1/team").as_deref(),
            Some("reg.example/team")
        );
        assert_eq!(
            key::normalize("reg.example/").as_deref(),
            Some("reg.example")
        );
        let k = keys(&["https://reg.example/v2/"]);
        assert_eq!(
            matching_key("reg.example/app:1", &k),
            Some("https://reg.example/v2/")
        );
    }

    /// kubelet's `TestURLsMatch` cases (`keyring_test.go`), glob key against
    /// the image's `domain/path`.
    #[test]
    fn urls_match_as_in_kubelets_table() {
        let table = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true),
            ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true),
            (
                "*.kubernetes.io:1111/blah",
                "prefix.kubernetes.io:1111/blah",
                true,
            ),
            (
                "prefix.*.io:1111/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                true,
            ),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "prefix.kubernetes.io", false),
            ("*.*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "kubernetes.com", false),
            ("k*.io", "quay.io", false),
            (
                "*.kubernetes.io:1234/blah",
                "prefix.kubernetes.io:1111/blah",
                false,
            ),
            (
                "prefix.*.io/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                false,
            ),
        ];
        for (glob, target, want) in table {
            let got = urls_match(&Location::parse(glob), &Location::parse(target));
            assert_eq!(got, want, "{glob} against {target}");
        }
    }

    /// kubelet's `TestDockerKeyringForGlob` and `TestKeyringMiss`: a key,
    /// and an image under `/foo/bar` it must (or must not) serve.
    #[test]
    fn keys_serve_images_as_in_kubelets_keyring_tests() {
        let hits = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "prefix.docker.io"),
            ("https://prefix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.*", "prefix.docker.io"),
            ("https://*.docker.io/path", "prefix.docker.io/path"),
            ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
            ("https://prefix.docker.*/path", "prefix.docker.io/path"),
            ("https://*.docker.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.*.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.docker.*:8888", "prefix.docker.io:8888"),
            ("https://*.docker.io/v1/", "prefix.docker.io/path"),
            ("https://*.docker.io/v2/", "prefix.docker.io/path"),
            ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),
            ("*.docker.io:1111", "prefix.docker.io:1111/path"),
        ];
        for (key, image) in hits {
            let image = format!("{image}/foo/bar");
            assert!(
                matching_key(&image, &keys(&[key])).is_some(),
                "{key} should serve {image}"
            );
        }
        let misses = [
            ("https://hello.kubernetes.io", "world.mesos.org/foo/bar"),
            ("https://*.docker.com", "prefix.docker.io"),
            ("https://suffix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.c*", "prefix.docker.io"),
            ("suffix.*.io", "prefix.docker.io"),
            ("https://index.docker.io/v1/", "world.mesos.org/foo/bar"),
        ];
        for (key, image) in misses {
            let image = format!("{image}/foo/bar");
            assert!(
                matching_key(&image, &keys(&[key])).is_none(),
                "{key} should not serve {image}"
            );
        }
        // Docker Hub's default key serves unqualified and qualified Hub images.
        for image in [
            "google/docker-registry",
            "jenkins",
            "index.docker.io/google/docker-registry",
        ] {
            assert!(
                matching_key(image, &keys(&["https://index.docker.io/v1/"])).is_some(),
                "{image}"
            );
        }
    }

    #[test]
    fn host_labels_glob_match_one_for_one() {
        let k = keys(&["*.dkr.ecr.*.amazonaws.com"]);
        assert!(matching_key("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", &k).is_some());
        assert!(matching_key("123456789012.dkr.ecr.eu-west-1.amazonaws.com.cn/app", &k).is_none());
        let k = keys(&["*.example.com"]);
        assert!(matching_key("a.example.com/x", &k).is_some());
        assert!(
            matching_key("a.b.example.com/x", &k).is_none(),
            "* never spans a dot"
        );
        assert!(matching_key("example.com/x", &k).is_none());
    }

    #[test]
    fn glob_classes_and_escapes_follow_go_filepath_match() {
        assert_eq!(glob_match("reg[0-9]", "reg7"), Some(true));
        assert_eq!(glob_match("reg[^0-9]", "reg7"), Some(false));
        assert_eq!(glob_match("r?g", "reg"), Some(true));
        assert_eq!(glob_match(r"a\*", "a*"), Some(true));
        assert_eq!(glob_match(r"a\*", "ab"), Some(false));
        assert_eq!(glob_match("[", "a"), None);
        assert_eq!(glob_match("[]", "a"), None);
        assert_eq!(matching_key("reg.example/x", &keys(&["[.example"])), None);
    }

    #[test]
    fn port_must_match_exactly() {
        let k = keys(&["reg.example:5000"]);
        assert!(matching_key("reg.example:5000/app", &k).is_some());
        assert!(matching_key("reg.example/app", &k).is_none());
        assert!(matching_key("reg.example:5001/app", &k).is_none());
        assert!(matching_key("reg.example:5000/app", &keys(&["reg.example"])).is_none());
        assert!(matching_key("localhost:5000/app", &keys(&["localhost:5000"])).is_some());
    }

    #[test]
    fn key_path_is_a_string_prefix_of_the_image_path_as_in_kubelet() {
        let k = keys(&["quay.io/team"]);
        assert!(matching_key("quay.io/team/app", &k).is_some());
        assert!(matching_key("quay.io/other/app", &k).is_none());
        // kubelet compares strings, not segments: it would send this key.
        assert!(matching_key("quay.io/teamx/app", &k).is_some());
    }

    #[test]
    fn most_specific_key_is_tried_first() {
        let k = keys(&["quay.io", "quay.io/team"]);
        assert_eq!(matching_key("quay.io/team/app", &k), Some("quay.io/team"));
        assert_eq!(matching_key("quay.io/other/app", &k), Some("quay.io"));
    }

    #[test]
    fn digest_references_match_by_repository() {
        let image = format!("reg.example/app@sha256:{}", "b".repeat(64));
        assert_eq!(
            matching_key(&image, &keys(&["reg.example"])),
            Some("reg.example")
        );
    }

    #[test]
    fn unparseable_image_matches_nothing() {
        assert_eq!(matching_key("not an image", &keys(&["docker.io"])), None);
    }

    // --- classification over real messages ---------------------------------

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

    // --- sanitising ---------------------------------------------------------

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

    // --- the decision -------------------------------------------------------

    const AUTH_MSG: &str = r#"Failed to pull image "reg.example.com/team/app:1": failed to pull and unpack image "reg.example.com/team/app:1": failed to resolve reference "reg.example.com/team/app:1": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized"#;

    fn event(message: &str) -> PullEvent<'_> {
        PullEvent {
            namespace: "team-a",
            pod: "app-0",
            message,
            time: t(0),
            reporting_component: Some(KUBELET),
            source_component: Some(KUBELET),
        }
    }

    #[test]
    fn only_the_kubelet_reports_pull_failures() {
        assert!(reported_by_kubelet(Some("kubelet"), Some("kubelet")));
        assert!(
            reported_by_kubelet(None, Some("kubelet")),
            "legacy recorder"
        );
        assert!(reported_by_kubelet(Some(""), Some("kubelet")));
        assert!(!reported_by_kubelet(None, None));
        assert!(!reported_by_kubelet(Some("kubectl"), Some("kubelet")));
        assert!(!reported_by_kubelet(None, Some("my-operator")));
        assert!(!reported_by_kubelet(Some("Kubelet"), None));
    }

    #[test]
    fn an_event_not_from_the_kubelet_is_ignored() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let mut forged = event(AUTH_MSG);
        forged.reporting_component = None;
        forged.source_component = None;
        assert_eq!(attribute(&forged, &r), Err(Ignored::NotKubelet));
        forged.reporting_component = Some("anyone");
        assert_eq!(attribute(&forged, &r), Err(Ignored::NotKubelet));
    }

    #[test]
    fn every_kept_text_is_bounded() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let pod = "é".repeat(100 * 1024);
        let namespace = "n".repeat(1000);
        let error = "ü".repeat(10_000);
        let image = format!("reg.example.com/{}:1", "a".repeat(5000));
        let message = format!("Failed to pull image \"{image}\": 401 Unauthorized {error}");
        let mut e = event(&message);
        e.pod = &pod;
        e.namespace = &namespace;
        let got = attribute(&e, &r).unwrap();
        let f = &got[0].failure;
        for (what, text, max) in [
            ("pod", &f.pod, NAME_MAX),
            ("namespace", &f.namespace, NAME_MAX),
            ("host", &f.host, NAME_MAX),
            ("image", &f.image, DETAIL_MAX),
            ("detail", &f.detail, DETAIL_MAX),
        ] {
            assert!(text.chars().count() <= max, "{what}: {}", text.len());
        }
        assert!(f.pod.starts_with("éé") && f.pod.ends_with('…'));
    }

    #[test]
    fn bounded_cuts_on_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("ééé", 2), "é…");
        assert_eq!(bounded("", 0), "");
    }

    #[test]
    fn auth_failure_on_a_served_host_counts_for_the_resource() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let got = attribute(&event(AUTH_MSG), &r).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].resource, "main");
        assert_eq!(got[0].auth_reason, Unauthorized);
        let f = &got[0].failure;
        assert_eq!(
            (
                f.namespace.as_str(),
                f.pod.as_str(),
                f.image.as_str(),
                f.host.as_str()
            ),
            (
                "team-a",
                "app-0",
                "reg.example.com/team/app:1",
                "reg.example.com"
            )
        );
        assert_eq!(f.time, t(0));
        assert_eq!(f.reason, Unauthorized.as_str());
        assert!(f.detail.ends_with("401 Unauthorized"));
    }

    #[test]
    fn not_found_event_is_not_counted() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let msg = r#"Failed to pull image "reg.example.com/a:1": rpc error: code = NotFound desc = failed to pull and unpack image "reg.example.com/a:1": failed to resolve reference "reg.example.com/a:1": reg.example.com/a:1: not found"#;
        assert_eq!(attribute(&event(msg), &r), Err(Ignored::NotAuth(NOT_FOUND)));
    }

    #[test]
    fn network_failure_event_is_not_counted() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let msg = r#"Failed to pull image "reg.example.com/a:1": failed to do request: Head "https://reg.example.com/v2/a/manifests/1": dial tcp: lookup reg.example.com: no such host"#;
        assert_eq!(attribute(&event(msg), &r), Err(Ignored::NotAuth(NETWORK)));
    }

    #[test]
    fn unselected_namespace_and_unmanaged_host_are_ignored() {
        let served = keys(&["reg.example.com"]);
        let other = keys(&["quay.io"]);
        let r = [
            ResourceView {
                name: "not-here",
                selects_namespace: false,
                keys: &served,
            },
            ResourceView {
                name: "other-host",
                selects_namespace: true,
                keys: &other,
            },
        ];
        assert_eq!(attribute(&event(AUTH_MSG), &r), Err(Ignored::NotServed));
    }

    #[test]
    fn every_resource_serving_the_host_gets_the_failure() {
        let a = keys(&["reg.example.com"]);
        let b = keys(&["*.example.com", "quay.io"]);
        let r = [
            ResourceView {
                name: "a",
                selects_namespace: true,
                keys: &a,
            },
            ResourceView {
                name: "b",
                selects_namespace: true,
                keys: &b,
            },
        ];
        let got = attribute(&event(AUTH_MSG), &r).unwrap();
        let hosts: Vec<_> = got
            .iter()
            .map(|x| (x.resource, x.failure.host.as_str()))
            .collect();
        assert_eq!(hosts, [("a", "reg.example.com"), ("b", "*.example.com")]);
    }

    #[test]
    fn non_pull_failed_events_are_ignored() {
        assert_eq!(
            attribute(&event("Error: ErrImagePull"), &[]),
            Err(Ignored::NotAPull)
        );
        let bad = r#"Failed to pull image "Bad Image": 401 Unauthorized"#;
        assert_eq!(attribute(&event(bad), &[]), Err(Ignored::BadImage));
    }

    #[test]
    fn failure_carries_no_secret_from_the_message() {
        let k = keys(&["reg.example.com"]);
        let r = [ResourceView {
            name: "main",
            selects_namespace: true,
            keys: &k,
        }];
        let msg = r#"Failed to pull image "reg.example.com/app:1": failed to authorize: failed to fetch oauth token: unexpected status from POST request to https://robot:s3cr3t@reg.example.com/service/token?account=robot&token=abc: 401 Unauthorized"#;
        let got = attribute(&event(msg), &r).unwrap();
        let shown = serde_json::to_string(&got[0].failure).unwrap();
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("token=abc"),
            "{shown}"
        );
    }

    #[test]
    fn event_time_prefers_last_timestamp_then_event_time() {
        assert_eq!(event_time(Some(t(3)), Some(t(2)), Some(t(1)), t(9)), t(3));
        assert_eq!(event_time(None, Some(t(2)), Some(t(1)), t(9)), t(2));
        assert_eq!(event_time(None, None, Some(t(1)), t(9)), t(1));
        assert_eq!(event_time(None, None, None, t(9)), t(9));
    }

    // --- recovery gating ----------------------------------------------------

    #[test]
    fn remint_is_triggered_at_most_once_a_minute_per_host() {
        let mut gate = RemintGate::default();
        assert!(gate.try_trigger("main", "reg.example.com", t(0)));
        assert!(!gate.try_trigger("main", "reg.example.com", t(59)));
        assert!(
            gate.try_trigger("main", "quay.io", t(59)),
            "hosts are independent"
        );
        assert!(
            gate.try_trigger("other", "reg.example.com", t(59)),
            "resources too"
        );
        assert!(gate.try_trigger("main", "reg.example.com", t(60)));
        assert!(!gate.try_trigger("main", "reg.example.com", t(61)));
    }

    #[test]
    fn remint_gate_forgets_quiet_hosts() {
        let mut gate = RemintGate::default();
        for i in 0..100 {
            gate.try_trigger("main", &format!("h{i}"), t(0));
        }
        gate.try_trigger("main", "h0", t(120));
        assert_eq!(gate.last.len(), 1);
    }

    #[test]
    fn remint_due_allows_a_clock_that_went_backwards() {
        assert!(remint_due(None, t(0), REMINT_INTERVAL));
        assert!(remint_due(Some(t(100)), t(0), REMINT_INTERVAL));
    }

    // --- the capped list ----------------------------------------------------

    fn failure(pod: &str, at: i64) -> PullFailure {
        PullFailure {
            namespace: "ns".into(),
            pod: pod.into(),
            image: "reg.example.com/app:1".into(),
            host: "reg.example.com".into(),
            time: t(at),
            reason: Unauthorized.as_str().into(),
            detail: String::new(),
            diagnosis: None,
        }
    }

    fn pods(log: &PullFailureLog) -> Vec<&str> {
        log.recent.iter().map(|f| f.pod.as_str()).collect()
    }

    #[test]
    fn list_is_newest_first_and_capped_with_a_total() {
        let mut log = PullFailureLog::default();
        for i in 0..25 {
            assert!(log.record(failure(&format!("p{i}"), i), PULL_FAILURES_CAP));
        }
        assert_eq!(log.total, 25);
        assert_eq!(log.recent.len(), PULL_FAILURES_CAP);
        assert_eq!(log.recent[0].pod, "p24");
        assert_eq!(log.recent[19].pod, "p5");
    }

    #[test]
    fn a_repeated_event_moves_to_the_front_and_counts_again() {
        let mut log = PullFailureLog::default();
        log.record(failure("a", 1), 20);
        log.record(failure("b", 2), 20);
        assert!(log.record(failure("a", 3), 20));
        assert_eq!(pods(&log), ["a", "b"]);
        assert_eq!(log.total, 3);
    }

    #[test]
    fn a_redelivered_event_is_not_counted_twice() {
        let mut log = PullFailureLog::default();
        log.record(failure("a", 5), 20);
        assert!(!log.record(failure("a", 5), 20));
        assert!(!log.record(failure("a", 4), 20), "older than what we have");
        assert_eq!(log.total, 1);
    }

    #[test]
    fn a_late_event_is_placed_by_its_time() {
        let mut log = PullFailureLog::default();
        log.record(failure("new", 10), 20);
        log.record(failure("old", 1), 20);
        assert_eq!(pods(&log), ["new", "old"]);
    }
}
