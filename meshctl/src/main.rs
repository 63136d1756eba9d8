//! `meshctl`: the operator's CLI for Rampart.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod authz;
mod ca_rotation;
mod check;
mod client;
mod commands;
mod demo;
mod http;
mod identity;
mod image;
mod image_report;
mod inject;
mod install;
mod mesh;
mod metrics;
mod policy;
mod policy_report;
mod proxy_config;
mod proxy_status;
mod status;
mod table;

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
    /// Create or update mesh resources from YAML/JSON files (all or nothing).
    Apply {
        /// File, directory (every .yaml/.yml/.json in it) or - for stdin; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate and show what would change; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Install Rampart into the cluster KUBECONFIG points at (or print the
    /// manifests with --dry-run).
    Install(install::InstallArgs),
    /// Add the sidecar to Kubernetes manifests, offline, as the injection
    /// webhook would (Pods, Deployments, StatefulSets, DaemonSets, Jobs, ...).
    Inject(inject::InjectArgs),
    /// The admission security policy, offline: `meshctl policy check`
    /// exits 0 when every pod is admitted, 1 when one is denied, 2 on bad input.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Sign and verify images in their registry (cosign's key-based format).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Show mesh resources.
    Get {
        /// Kind: service (svc), workloadentry (we), trafficpolicy (tp), authorizationpolicy (ap), meshconfig, or all.
        kind: String,
        /// Only this name.
        name: Option<String>,
        /// Only this namespace (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// Delete mesh resources by kind and name, or those named in files.
    Delete {
        /// Kind of the resources to delete.
        kind: Option<String>,
        /// Names to delete.
        names: Vec<String>,
        /// Namespace (default: default).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Delete the resources described in these files instead.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "names"])]
        files: Vec<PathBuf>,
    },
    /// xDS sync state of every connected proxy: SYNCED, STALE or NACKED per type.
    ProxyStatus {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// The xDS resources served to one connected proxy (by node id).
    ProxyConfig {
        /// The proxy's node id (see proxy-status).
        node: String,
        /// Only this type: sds, cds, eds, lds or rds.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Output format (json and yaml print the Envoy resources).
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// Print the meshctl version, and with --data-dir or --control-plane the
    /// control plane's and its proxies'.
    Version,
    /// The mesh at a glance: control plane, trust, proxies, resources.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// Check the mesh: control plane reachable, CA and root expiry, proxies
    /// connected and accepting their configuration, clock skew.
    Check {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// The SVID a connected proxy holds: SPIFFE ID, serial, validity, chain.
    Identity {
        /// The proxy's node id (see proxy-status).
        node: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: mesh::Output,
    },
    /// Authorization questions, answered by the proxies' own policy evaluator.
    #[command(subcommand)]
    Authz(AuthzCommand),
    /// Print a shell completion script, e.g. `meshctl completions bash > /etc/bash_completion.d/meshctl`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Run the whole mesh locally on the embedded store, with live traffic;
    /// with a step, change the running demo.
    Demo {
        #[command(subcommand)]
        step: Option<demo::Step>,
        /// Requests per second from the demo's client.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rate: u32,
        /// How the live view prints.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: demo::View,
    },
}

#[derive(Subcommand, Debug)]
enum AuthzCommand {
    /// Would a call from --from to --to be allowed, and which policy decides?
    Check(authz::CheckArgs),
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
    /// Rotate the root of the control plane's self-signed CA. The control
    /// plane then goes on by itself: trusts the new root everywhere, signs
    /// with it and has every SVID re-issued, then drops the old root, each
    /// step once every connected proxy has followed. No proxy restarts.
    RotateRoot {
        /// Wait until the rotation is done (or this long), printing each phase.
        #[arg(long, value_parser = rampart_api::duration::parse)]
        wait: Option<std::time::Duration>,
    },
    /// Where a root rotation stands, and which proxies it waits for.
    Rotation,
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
        // Its own exit codes: 1 is a verdict, not a failure of meshctl.
        Command::Policy(policy::PolicyCommand::Check(args)) => return policy::check(&args).await,
        Command::Image(command) => return image::run(&cli.target, command).await,
        Command::Demo {
            step: None,
            rate,
            output,
        } => demo::run(&cli.target, rate, output).await,
        Command::Demo {
            step: Some(step), ..
        } => demo::step(&cli.target, step).await,
        Command::Check { output } => check::check(&cli.target, output).await,
        Command::Authz(AuthzCommand::Check(args)) => authz::check(&cli.target, args).await,
        Command::Identity { node, output } => identity::identity(&cli.target, &node, output).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "meshctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Version => status::version(&cli.target).await,
        Command::Status { output } => status::status(&cli.target, output).await,
        Command::Token(TokenCommand::Create(id)) => {
            commands::token_create(&cli.target, &id.namespace, &id.service_account, id.ttl).await
        }
        Command::Ca(CaCommand::Bundle) => commands::ca_bundle(&cli.target).await,
        Command::Ca(CaCommand::RotateRoot { wait }) => {
            ca_rotation::rotate_root(&cli.target, wait).await
        }
        Command::Ca(CaCommand::Rotation) => ca_rotation::rotation(&cli.target).await,
        Command::ProxyStatus { output } => proxy_status::proxy_status(&cli.target, output).await,
        Command::ProxyConfig { node, kind, output } => {
            proxy_config::proxy_config(&cli.target, &node, kind.as_deref(), output).await
        }
        Command::Inject(args) => inject::inject(&args),
        Command::Install(args) => install::install(&args).await,
        Command::Apply { files, dry_run } => mesh::apply(&cli.target, &files, dry_run).await,
        Command::Policy(policy::PolicyCommand::Report(args)) => {
            policy_report::report(&cli.target, &args).await
        }
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            let kind = if kind == "all" { "" } else { kind.as_str() };
            mesh::get(
                &cli.target,
                kind,
                name.as_deref(),
                namespace.as_deref(),
                output,
            )
            .await
        }
        Command::Delete {
            kind,
            names,
            namespace,
            files,
        } => {
            mesh::delete(
                &cli.target,
                kind.as_deref(),
                &names,
                namespace.as_deref(),
                &files,
            )
            .await
        }
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
