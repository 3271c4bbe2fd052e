//! The `run` command: the Kubernetes client, leader election, the metrics
//! and webhook servers, and shutdown on SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use regbridge::cli::RunArgs;
use regbridge::ops::health::{self, Health};
use regbridge::ops::leader;
use regbridge::ops::metrics::Metrics;
use regbridge::reconcile::{self, Config};
use regbridge::webhook::{self, WebhookConfig};
use regbridge_providers::Trust;
use tracing::info;

pub async fn run(args: RunArgs, trust: Trust) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(leader::default_identity);
    // Both ports are bound before anything starts: one already in use is a
    // startup error the kubelet shows, not a replica that runs half deaf.
    let metrics_listener = bind(args.metrics_addr, "--metrics-addr").await?;
    let webhook_listener = match args.webhook {
        true => Some(bind(args.webhook_addr, "--webhook-addr").await?),
        false => None,
    };
    let server = tokio::spawn(health::serve(
        metrics_listener,
        health.clone(),
        metrics.clone(),
    ));
    let webhook = webhook_listener.map(|listener| {
        let run = webhook::run(
            client.clone(),
            WebhookConfig {
                namespace: args.namespace.clone(),
                service: args.webhook_service.clone(),
                secret: args.webhook_secret.clone(),
                configuration: args.webhook_configuration.clone(),
                extra_names: args.webhook_cert_names.clone(),
                tls_dir: args.webhook_tls_dir.clone(),
            },
            listener,
            health.clone(),
            metrics.clone(),
            shutdown_signal(),
        );
        tokio::spawn(async move {
            if let Err(e) = run.await {
                tracing::error!(error = %format!("{e:#}"), "the admission webhook stopped");
            }
        })
    });
    let config = Config {
        namespace: args.namespace.clone(),
        write_concurrency: args.write_concurrency,
        trust,
        instance: instance.clone(),
    };
    let work = || {
        reconcile::run(
            client.clone(),
            config.clone(),
            health.clone(),
            metrics.clone(),
            shutdown_signal(),
        )
    };
    if args.leader_election {
        // A standby never runs the controller, so it watches for SIGTERM here.
        tokio::select! {
            r = leader::while_leader(client.clone(), &args.namespace, &args.lease_name, &instance, &health, work) => r?,
            _ = shutdown_signal() => {}
        }
    } else {
        work().await;
    }
    server.abort();
    if let Some(w) = webhook {
        w.abort();
    }
    info!("stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))
}

/// SIGTERM (the kubelet) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
