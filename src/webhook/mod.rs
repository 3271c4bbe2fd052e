//! The mutating admission webhook's server. Every replica serves it, leader
//! or not, from its own small caches (the `ClusterPullSecret`s and a compact
//! namespace index); the decisions themselves are in [`crate::decide::admission`].

pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};

use self::tls::CertResolver;
use crate::api::crd::ClusterPullSecret;
use crate::cache::index::{Index, NamespaceView};
use crate::cache::selections::SelectionCache;
use crate::decide::admission::{self, Kind, Target};
use crate::ops::health::Health;
use crate::ops::metrics::{AdmissionLabels, Metrics, RefusalLabels};

/// The path the `MutatingWebhookConfiguration` posts to.
pub const PATH: &str = "/mutate";
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers, counted from the end
/// of the TLS handshake or of the previous response; so it is also how long
/// an idle keep-alive connection stays open. The API server sends a review's
/// headers at once, and opens a new connection (one handshake) when an idle
/// one has been closed; a client that stalls is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one review may take from its headers to its answer: waiting for
/// a review slot, reading the body and deciding. The API server abandons a
/// call after the configuration's `timeoutSeconds` (2), so this cuts off only
/// a client the API server would no longer wait for: one trickling a body.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. The next client waits in the kernel's accept
/// backlog, before its TLS handshake, so it costs this process nothing. A
/// connection that is not in a review holds rustls's buffers (about two TLS
/// records) and hyper's read buffer (`MAX_HEAD_BYTES`): under 64 KiB, so
/// 512 connections stay under 32 MiB. The API server keeps one connection
/// per concurrent call; 512 is far more than its admission concurrency.
pub const MAX_CONNECTIONS: usize = 512;
/// Reviews read into memory at once; others wait for a slot (within
/// [`REVIEW_TIMEOUT`]) with their bodies still in the socket. A review takes
/// a fraction of a millisecond, so 4 slots answer thousands per second; each
/// holds at most [`MAX_REVIEW_BYTES`] of body, a contiguous copy of it and
/// the parsed object, so about 48 MiB in all at the worst.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 4;
/// The largest request body read. The largest review this webhook is sent
/// is a ServiceAccount UPDATE, which carries the object and its `oldObject`
/// (a Pod CREATE carries one object). etcd refuses to store a value over
/// 1.5 MiB (its default `--max-request-bytes`), so each object is at most
/// that as stored; an object gets that big through its strings (annotations,
/// environment values, command lines), which JSON carries at nearly the same
/// size. Two of them plus the review's envelope fit in 4 MiB. (axum's default
/// of 2 MiB refused an UPDATE of two large objects.) A bigger body gets 413,
/// and `failurePolicy: Ignore` admits the object unchanged: the controller's
/// watch then patches the ServiceAccount as it does without the webhook.
pub(crate) const MAX_REVIEW_BYTES: usize = 4 << 20;
/// hyper's read buffer, which bounds a request's head (request line and
/// headers). The API server's headers take well under 2 KiB; the body is
/// read through the same buffer in pieces of this size.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// How often a mounted certificate (cert-manager) is read again.
const RELOAD_MOUNTED_EVERY: Duration = Duration::from_secs(300);
/// How long a request waits for its namespace to reach the cache: a
/// namespace created a moment before its first ServiceAccount (one Helm
/// release, one `kubectl apply`) is the race the webhook exists to close.
pub(crate) const NAMESPACE_WAIT: Duration = Duration::from_millis(500);
/// How soon a failed certificate step is retried.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often the `caBundle` is checked even when nothing is due: Helm
/// creates webhook configurations after Deployments, and a GitOps re-apply
/// can empty the field, so a replica must notice either within a minute.
const CA_BUNDLE_RECHECK: Duration = Duration::from_secs(60);

/// What the handler reads: the caches and whether they have synced.
pub struct Webhook {
    selections: SelectionCache,
    resources: Store<ClusterPullSecret>,
    namespaces: Index<NamespaceView>,
    resources_synced: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The review slots ([`MAX_REVIEWS_IN_FLIGHT`]).
    reviews: Semaphore,
}

impl Webhook {
    pub fn new(
        resources: Store<ClusterPullSecret>,
        namespaces: Index<NamespaceView>,
        resources_synced: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            selections: SelectionCache::default(),
            resources,
            namespaces,
            resources_synced,
            metrics,
            reviews: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }

    pub fn synced(&self) -> bool {
        self.resources_synced.load(Ordering::SeqCst) && self.namespaces.is_synced()
    }

    /// The cached namespace, waiting up to [`NAMESPACE_WAIT`] for one that
    /// has not reached the cache yet.
    async fn namespace(&self, name: &str) -> Option<Arc<NamespaceView>> {
        let deadline = Instant::now() + NAMESPACE_WAIT;
        loop {
            if let Some(ns) = self.namespaces.get("", name) {
                return Some(ns);
            }
            if !self.synced() || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every live resource with its compiled selection.
    fn targets(&self) -> Vec<Target> {
        let mut out: Vec<Target> = self
            .selections
            .each(self.resources.state())
            .into_iter()
            .filter_map(|(r, selection)| Target::of(&r, selection?))
            .collect();
        // The store's order is arbitrary; keep decisions deterministic.
        out.sort_by(|a, b| a.secret_name.cmp(&b.secret_name));
        out
    }

    /// Answers one AdmissionReview body; always an AdmissionReview.
    pub async fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "unreadable AdmissionReview");
                return AdmissionResponse::invalid(e).into_review();
            }
        };
        let req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return AdmissionResponse::invalid(e).into_review(),
        };
        let targets = self.targets();
        let namespace = match (req.namespace.as_deref(), Kind::of(&req)) {
            (Some(ns), Kind::ServiceAccount | Kind::Pod) => self.namespace(ns).await,
            _ => None,
        };
        let decision = admission::decide(&req, &targets, namespace.as_deref(), self.synced());
        let kind = Kind::of(&req);
        debug!(
            namespace = req.namespace.as_deref().unwrap_or(""),
            name = %req.name,
            kind = kind.as_str(),
            result = decision.result(),
            "admission"
        );
        let out = admission::respond(&req, &decision).into_review();
        self.metrics
            .admissions
            .get_or_create(&AdmissionLabels {
                kind: kind.as_str(),
                result: decision.result(),
            })
            .inc();
        self.metrics
            .admission_duration
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route(PATH, post(mutate))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .layer(middleware::from_fn_with_state(webhook.clone(), bounded))
        .with_state(webhook)
}

/// Runs one request in a review slot and within [`REVIEW_TIMEOUT`], so that
/// at most [`MAX_REVIEWS_IN_FLIGHT`] bodies are in memory, none for long.
async fn bounded(State(webhook): State<Arc<Webhook>>, request: Request, next: Next) -> Response {
    let work = async {
        let _slot = webhook.reviews.acquire().await;
        next.run(request).await
    };
    let (response, refusal) = match tokio::time::timeout(REVIEW_TIMEOUT, work).await {
        Ok(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => (r, Some("too_large")),
        Ok(r) => (r, None),
        Err(_) => (StatusCode::REQUEST_TIMEOUT.into_response(), Some("timeout")),
    };
    if let Some(reason) = refusal {
        debug!(reason, "admission request refused");
        webhook
            .metrics
            .webhook_refusals
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }
    response
}

async fn mutate(State(webhook): State<Arc<Webhook>>, body: Bytes) -> impl IntoResponse {
    match serde_json::to_vec(&webhook.review(&body).await) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, to at
/// most [`MAX_CONNECTIONS`] clients at once, each held to
/// [`HANDSHAKE_TIMEOUT`] and [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        // A slot first: a client over the cap stays in the kernel's backlog,
        // unaccepted, until a connection ends.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return, // never closed
            },
            _ = &mut shutdown => return,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let (acceptor, app, http) = (acceptor.clone(), app.clone(), http.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// How `regbridge run` serves the webhook.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The controller's namespace, where the certificate Secret lives.
    pub namespace: String,
    /// The Service in front of the webhook, for the certificate's names.
    pub service: String,
    /// The Secret holding the self-managed certificate.
    pub secret: String,
    /// The `MutatingWebhookConfiguration` whose `caBundle` to keep.
    pub configuration: String,
    /// More names (or IP addresses) for the certificate: a `url` host.
    pub extra_names: Vec<String>,
    /// A mounted `tls.crt`/`tls.key` (cert-manager) instead of the
    /// self-managed Secret.
    pub tls_dir: Option<PathBuf>,
}

fn read_mounted(dir: &std::path::Path) -> std::io::Result<(String, String)> {
    Ok((
        std::fs::read_to_string(dir.join("tls.crt"))?,
        std::fs::read_to_string(dir.join("tls.key"))?,
    ))
}

/// Keeps `resolver` current: the mounted files, or the shared Secret (and
/// the configuration's `caBundle`) renewed before expiry.
async fn keep_certificate(client: Client, config: WebhookConfig, resolver: Arc<CertResolver>) {
    // A missing configuration is said once, not every minute.
    let mut configuration_found = true;
    loop {
        let wait = match &config.tls_dir {
            Some(dir) => {
                match read_mounted(dir)
                    .map_err(|e| e.to_string())
                    .and_then(|(c, k)| resolver.set(&c, &k).map_err(|e| e.to_string()))
                {
                    Ok(()) => RELOAD_MOUNTED_EVERY,
                    Err(e) => {
                        warn!(dir = %dir.display(), error = %e, "reading the mounted webhook certificate");
                        RETRY_AFTER
                    }
                }
            }
            None => match refresh_managed(&client, &config, &resolver).await {
                Ok((wait, found)) => {
                    let found = found.unwrap_or(configuration_found);
                    if configuration_found && !found {
                        warn!(configuration = %config.configuration, "no MutatingWebhookConfiguration to put the CA into; the API server will not call this webhook until it exists");
                    }
                    configuration_found = found;
                    wait
                }
                Err(e) => {
                    warn!(error = %e, "keeping the webhook certificate");
                    RETRY_AFTER
                }
            },
        };
        tokio::time::sleep(wait).await;
    }
}

/// Renews the shared certificate when due and publishes its CA; returns
/// when to look again and whether the configuration exists (`None`: the
/// API server did not say).
async fn refresh_managed(
    client: &Client,
    config: &WebhookConfig,
    resolver: &CertResolver,
) -> Result<(Duration, Option<bool>), tls::TlsError> {
    let names = tls::dns_names(&config.service, &config.namespace, &config.extra_names);
    let now = chrono::Utc::now();
    let bundle = tls::ensure(client, &config.namespace, &config.secret, &names, now).await?;
    resolver.set(&bundle.cert_pem, &bundle.key_pem)?;
    match tls::publish_ca_bundle(client, &config.configuration, &bundle.ca_pem).await {
        Ok(found) => Ok((bundle.renewal_in(now).min(CA_BUNDLE_RECHECK), Some(found))),
        Err(e) => {
            warn!(error = %e, configuration = %config.configuration, "updating the webhook caBundle");
            Ok((RETRY_AFTER, None))
        }
    }
}

/// The first certificate, retried until there is one (or shutdown).
async fn first_certificate(
    client: &Client,
    config: &WebhookConfig,
) -> Result<CertResolver, tls::TlsError> {
    if let Some(dir) = &config.tls_dir {
        let (c, k) = read_mounted(dir)
            .map_err(|e| tls::TlsError::Unusable(format!("{}: {e}", dir.display())))?;
        return CertResolver::new(&c, &k);
    }
    let names = tls::dns_names(&config.service, &config.namespace, &config.extra_names);
    let bundle = tls::ensure(
        client,
        &config.namespace,
        &config.secret,
        &names,
        chrono::Utc::now(),
    )
    .await?;
    CertResolver::new(&bundle.cert_pem, &bundle.key_pem)
}

/// Runs the webhook on `listener` until `shutdown`: its caches, its
/// certificate and its server. The caller binds the port, so a port already
/// in use stops `regbridge run` at once instead of leaving it half serving.
/// Errors only when a certificate cannot be used.
pub async fn run(
    client: Client,
    config: WebhookConfig,
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tls::TlsError> {
    let resolver = loop {
        match first_certificate(&client, &config).await {
            Ok(r) => break Arc::new(r),
            Err(e) => {
                warn!(error = %e, "no webhook certificate yet; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    let tls = Arc::new(resolver.server_config()?);
    let (resources, resources_stream) = crate::cache::watches::cached(
        "webhook-clusterpullsecrets",
        Api::<ClusterPullSecret>::all(client.clone()),
        &health,
        &metrics,
    );
    let (namespaces, namespaces_stream) = crate::cache::watches::indexed::<Namespace, NamespaceView>(
        "webhook-namespaces",
        Api::all(client.clone()),
        watcher::Config::default(),
        &health,
        &metrics,
    );
    let resources_synced = Arc::new(AtomicBool::new(false));
    let flag = resources_synced.clone();
    let resources_stream = resources_stream.map(move |e| {
        if let Ok(watcher::Event::InitDone) = &e {
            flag.store(true, Ordering::SeqCst);
        }
        e
    });
    let caches = tokio::spawn(async move {
        let a = resources_stream.for_each(|_| async {});
        let b = namespaces_stream.for_each(|_| async {});
        tokio::join!(a, b);
    });
    let certificates = tokio::spawn(keep_certificate(client, config.clone(), resolver));
    let webhook = Arc::new(Webhook::new(
        resources,
        namespaces,
        resources_synced,
        metrics,
    ));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the admission webhook");
    }
    serve(listener, tls, router(webhook), shutdown).await;
    caches.abort();
    certificates.abort();
    Ok(())
}
