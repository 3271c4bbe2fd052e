//! The `regbridge` binary: parses the command line and hands each command
//! to its module (`app` for `run`, `mint`, the CRD printer).

mod app;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use regbridge::api::crd;
use regbridge::cli::{Cli, Command};
use regbridge::mint;
use regbridge::ops::telemetry;
use regbridge_providers::{Trust, Verifier};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What every HTTPS client trusts: the system store, plus `--ca-file`.
fn trust(ca_file: Option<&std::path::Path>) -> anyhow::Result<Trust> {
    let system = Trust::system();
    match ca_file {
        Some(path) => system.with_file(path).context("--ca-file"),
        None => Ok(system),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Mint(args) => {
            let trust = trust(cli.ca_file.as_deref())?;
            let composed = mint::mint(&args.config, &trust).await?;
            if args.reveal {
                println!("{}", String::from_utf8_lossy(&composed.dockerconfigjson));
            } else {
                print!("{}", mint::render_redacted(&composed));
            }
            if args.verify {
                let verifier =
                    Verifier::new(Duration::from_secs(args.verify_timeout)).with_trust(trust)?;
                let results = mint::verify(&composed, &verifier).await;
                let table = mint::render_verification(&results);
                if args.reveal {
                    eprint!("{table}");
                } else {
                    print!("\n{table}");
                }
                let rejected = mint::rejected(&results);
                if rejected > 0 {
                    anyhow::bail!(
                        "{rejected} of {} hosts rejected their credential",
                        results.len()
                    );
                }
            }
        }
        Command::Run(args) => {
            telemetry::init(cli.log_format);
            app::run(args, trust(cli.ca_file.as_deref())?).await?;
        }
    }
    Ok(())
}
