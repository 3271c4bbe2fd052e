//! Pull failures fed back to the resource: which of the
//! kubelet's `Failed` pull Events are authentication failures on a registry
//! that a `ClusterPullSecret` serves, and what goes on its status.
//!
//! Pure: the controller feeds Events from its watch and the resources'
//! selection results and composed hosts; this module decides. Nothing here
//! sees a credential, and everything it returns is safe to show on status.

pub(crate) mod classify;
pub(crate) mod image_ref;
pub(crate) mod keyring;
pub(crate) mod log;
pub(crate) mod remint;

use chrono::{DateTime, Utc};

use self::classify::{AuthReason, PullErrorClass, bounded, classify, parse_failed_pull, sanitize};
use self::image_ref::ImageRef;
use self::keyring::matching_key;
use self::log::PullFailure;

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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::decide::pull_failures::classify::AuthReason::Unauthorized;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

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
        assert_eq!(
            attribute(&event(msg), &r),
            Err(Ignored::NotAuth(PullErrorClass::NotFound))
        );
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
        assert_eq!(
            attribute(&event(msg), &r),
            Err(Ignored::NotAuth(PullErrorClass::Network))
        );
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
}
