//! `meshctl`: the operator's CLI for Rampart.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client;
mod commands;

/// Operate a Rampart mesh.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join tokens for standalone workloads.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates for workloads that cannot run the proxy (VMs, tools).
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// Print the meshctl version.
    Version,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a one-time join token; prints only the token.
    Create(IdentityArgs),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the trust bundle (PEM).
    Bundle,
}

#[derive(Subcommand, Debug)]
enum CertificateCommand {
    /// Generate a key locally and have the CA sign an SVID for it.
    Issue {
        #[command(flatten)]
        identity: IdentityArgs,
        /// Directory to write key.pem (0600), cert-chain.pem and bundle.pem into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct IdentityArgs {
    /// Namespace of the identity.
    #[arg(long, short = 'n')]
    namespace: String,
    /// Service account of the identity.
    #[arg(long)]
    service_account: String,
    /// Lifetime, e.g. 10m, 1h, 7d (join tokens: default 10m; certificates: the CA default).
    #[arg(long, value_parser = rampart_api::duration::parse)]
    ttl: Option<std::time::Duration>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("meshctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Token(TokenCommand::Create(id)) => {
            commands::token_create(&cli.target, &id.namespace, &id.service_account, id.ttl).await
        }
        Command::Ca(CaCommand::Bundle) => commands::ca_bundle(&cli.target).await,
        Command::Certificate(CertificateCommand::Issue { identity, out }) => {
            commands::certificate_issue(
                &cli.target,
                &identity.namespace,
                &identity.service_account,
                identity.ttl,
                &out,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
