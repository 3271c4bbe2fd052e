//! The command line. Every flag can also be set from a `REGBRIDGE_*`
//! environment variable, which is how the Helm chart configures it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::ops::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "regbridge",
    version,
    about = "Keeps registry pull credentials fresh and distributes them to namespaces and ServiceAccounts",
    long_about = "regbridge mints short-lived registry credentials (ECR, GAR/GCR, ACR, Harbor robots, \
                  static accounts), composes them into one dockerconfigjson Secret per ClusterPullSecret, and \
                  distributes that Secret to the selected namespaces and ServiceAccounts."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "REGBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A PEM bundle of CA certificates to trust besides the system store
    /// (which `SSL_CERT_FILE` and `SSL_CERT_DIR` replace, as for OpenSSL),
    /// for registry verification and every provider's HTTPS calls. The
    /// chart's `extraCA` value mounts one from a ConfigMap or Secret.
    #[arg(long, global = true, env = "REGBRIDGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

// Parsed once per process; boxing the run arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (in-cluster config, or KUBECONFIG outside a cluster).
    Run(RunArgs),
    /// Print the ClusterPullSecret CRD as YAML.
    Crd,
    /// Mint and compose credentials locally, without a cluster, and print
    /// them redacted.
    Mint(MintArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Namespace where source Secrets are read and composed Secrets written.
    #[arg(long, env = "REGBRIDGE_NAMESPACE", default_value = "regbridge")]
    pub namespace: String,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "REGBRIDGE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so only one replica writes.
    #[arg(long, env = "REGBRIDGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader election Lease (in --namespace).
    #[arg(long, env = "REGBRIDGE_LEASE_NAME", default_value = "regbridge-leader")]
    pub lease_name: String,
    /// Concurrent API writes per reconcile.
    #[arg(long, env = "REGBRIDGE_WRITE_CONCURRENCY", default_value_t = 32)]
    pub write_concurrency: usize,
    /// This replica's identity in the Lease and in Events; it must differ
    /// between replicas (the chart sets the pod name). Default: the host
    /// name plus a random suffix, new at every start.
    #[arg(long, env = "REGBRIDGE_INSTANCE")]
    pub instance: Option<String>,
    /// Serve the mutating admission webhook (on every replica, leader or
    /// not). `--webhook=false` turns it off.
    #[arg(long, env = "REGBRIDGE_WEBHOOK", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook: bool,
    /// Address serving the admission webhook over HTTPS.
    #[arg(long, env = "REGBRIDGE_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// The Service in front of the webhook (in --namespace); its DNS names
    /// go into the self-managed serving certificate.
    #[arg(
        long,
        env = "REGBRIDGE_WEBHOOK_SERVICE",
        default_value = "regbridge-webhook"
    )]
    pub webhook_service: String,
    /// The Secret (in --namespace) holding the self-managed webhook
    /// certificate, shared by every replica.
    #[arg(
        long,
        env = "REGBRIDGE_WEBHOOK_SECRET",
        default_value = "regbridge-webhook-tls"
    )]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle regbridge keeps
    /// current (skipped with a warning when it does not exist).
    #[arg(
        long,
        env = "REGBRIDGE_WEBHOOK_CONFIGURATION",
        default_value = "regbridge"
    )]
    pub webhook_configuration: String,
    /// More names or IP addresses for the serving certificate, e.g. the
    /// host of a `url` webhook configuration. Comma-separated in the env.
    #[arg(long, env = "REGBRIDGE_WEBHOOK_CERT_NAMES", value_delimiter = ',')]
    pub webhook_cert_names: Vec<String>,
    /// Serve `tls.crt` and `tls.key` from this directory (cert-manager)
    /// instead of keeping a self-signed certificate in a Secret.
    #[arg(long, env = "REGBRIDGE_WEBHOOK_TLS_DIR")]
    pub webhook_tls_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MintArgs {
    /// YAML file with a `credentials:` list, as in a ClusterPullSecret spec,
    /// or a ClusterPullSecret manifest (its `spec.credentials` are minted).
    #[arg(long, env = "REGBRIDGE_MINT_CONFIG")]
    pub config: PathBuf,
    /// Print only the raw dockerconfigjson, unredacted, for piping.
    #[arg(long)]
    pub reveal: bool,
    /// Also prove each composed host against its registry (the Docker
    /// Registry v2 handshake, one per host) and print `HOST RESULT MESSAGE`;
    /// exit non-zero when any host rejects its credential. With `--reveal`
    /// the results go to stderr.
    #[arg(long, env = "REGBRIDGE_MINT_VERIFY")]
    pub verify: bool,
    /// Upper bound on one host's handshake, in seconds.
    #[arg(long, env = "REGBRIDGE_VERIFY_TIMEOUT", default_value_t = 10)]
    pub verify_timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["regbridge", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.namespace, "regbridge");
        assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:8080");
        assert!(args.leader_election);
        assert!(args.webhook);
        assert_eq!(args.webhook_addr.to_string(), "0.0.0.0:9443");
        assert_eq!(args.webhook_service, "regbridge-webhook");
        assert!(args.webhook_tls_dir.is_none());
        let cli = Cli::try_parse_from(["regbridge", "run", "--webhook=false"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(!args.webhook);
        let cli = Cli::try_parse_from(["regbridge", "run", "--leader-election", "false"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(!args.leader_election);
    }

    #[test]
    fn mint_verify_is_off_unless_asked() {
        let cli = Cli::try_parse_from(["regbridge", "mint", "--config", "m.yaml"]).unwrap();
        let Command::Mint(args) = cli.command else {
            panic!("not mint")
        };
        assert!(!args.verify);
        assert_eq!(args.verify_timeout, 10);
        let cli =
            Cli::try_parse_from(["regbridge", "mint", "--config", "m.yaml", "--verify"]).unwrap();
        let Command::Mint(args) = cli.command else {
            panic!("not mint")
        };
        assert!(args.verify);
    }
}
