//! `rampart-proxy init`: the iptables rules that send a workload's TCP
//! traffic through its sidecar (run once per pod or VM network namespace,
//! as root, before the app starts). Inbound TCP goes to the inbound capture
//! port, outbound TCP to the outbound capture port; the proxy's own traffic
//! (its UID), loopback, and the excluded ports and CIDRs are left alone.
//! Rules live in chains of their own (`RAMPART_*`), applied in one
//! `iptables-restore` transaction, so they are all there or none are.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::Parser;

/// Install the iptables rules that capture the workload's traffic.
#[derive(Parser, Debug)]
#[command(name = "rampart-proxy init")]
pub struct InitArgs {
    /// The proxy's UID: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// Where inbound connections are redirected (rampart-proxy --capture).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Where outbound connections are redirected.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound ports left alone (comma-separated), e.g. the admin port.
    #[arg(long, value_delimiter = ',', default_value = "15000")]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone, as CIDRs (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    exclude_outbound_cidrs: Vec<String>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// `IP/LEN` with a valid IPv4 address and length.
fn parse_cidr(s: &str) -> Result<String, String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    if !ip.is_ipv4() {
        return Err(format!("{s:?}: only IPv4 is captured for now"));
    }
    match len.parse::<u8>() {
        Ok(l) if l <= 32 => Ok(format!("{ip}/{l}")),
        _ => Err(format!("{s:?}: {len:?} is not a prefix length (0-32)")),
    }
}

/// The rules, in `iptables-restore` format (table `nat`).
pub fn rules(args: &InitArgs) -> String {
    let mut r = String::from("*nat\n");
    for chain in [
        "RAMPART_INBOUND",
        "RAMPART_IN_REDIRECT",
        "RAMPART_OUTPUT",
        "RAMPART_REDIRECT",
    ] {
        r.push_str(&format!(":{chain} - [0:0]\n"));
    }
    r.push_str("-A PREROUTING -p tcp -j RAMPART_INBOUND\n");
    for port in &args.exclude_inbound_ports {
        r.push_str(&format!(
            "-A RAMPART_INBOUND -p tcp --dport {port} -j RETURN\n"
        ));
    }
    r.push_str("-A RAMPART_INBOUND -p tcp -j RAMPART_IN_REDIRECT\n");
    r.push_str(&format!(
        "-A RAMPART_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.inbound_port
    ));
    r.push_str("-A OUTPUT -p tcp -j RAMPART_OUTPUT\n");
    // The proxy's own connections (to peers, to the app, to the control plane).
    r.push_str(&format!(
        "-A RAMPART_OUTPUT -m owner --uid-owner {} -j RETURN\n",
        args.proxy_uid
    ));
    r.push_str("-A RAMPART_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
    for cidr in &args.exclude_outbound_cidrs {
        r.push_str(&format!("-A RAMPART_OUTPUT -d {cidr} -j RETURN\n"));
    }
    for port in &args.exclude_outbound_ports {
        r.push_str(&format!(
            "-A RAMPART_OUTPUT -p tcp --dport {port} -j RETURN\n"
        ));
    }
    r.push_str("-A RAMPART_OUTPUT -j RAMPART_REDIRECT\n");
    r.push_str(&format!(
        "-A RAMPART_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.outbound_port
    ));
    r.push_str("COMMIT\n");
    r
}

/// Prints or applies the rules.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let text = rules(args);
    if args.dry_run {
        print!("{text}");
        return Ok(());
    }
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (install iptables; run as root in the workload's network namespace)")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .context("writing the rules to iptables-restore")?;
    let out = child
        .wait_with_output()
        .context("waiting for iptables-restore")?;
    if !out.status.success() {
        anyhow::bail!(
            "iptables-restore refused the rules (nothing was applied): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!(
        "rampart-proxy init: inbound TCP -> :{}, outbound TCP -> :{} (UID {} excluded)",
        args.inbound_port, args.outbound_port, args.proxy_uid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_loopback_and_exclusions_are_left_alone() {
        let args = InitArgs::parse_from([
            "init",
            "--exclude-inbound-ports",
            "15000,22",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32,169.254.0.0/16",
            "--exclude-outbound-ports",
            "53",
        ]);
        let text = rules(&args);
        assert!(text.contains("-A RAMPART_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(text.contains("-A RAMPART_INBOUND -p tcp --dport 22 -j RETURN"));
        assert!(text.contains("-A RAMPART_OUTPUT -d 169.254.0.0/16 -j RETURN"));
        assert!(text.contains("-A RAMPART_OUTPUT -p tcp --dport 53 -j RETURN"));
        assert!(
            text.contains("REDIRECT --to-ports 15006")
                && text.contains("REDIRECT --to-ports 15001")
        );
        // Exclusions come before the redirect in each chain.
        assert!(
            text.find("--dport 53 -j RETURN").unwrap()
                < text.find("-A RAMPART_OUTPUT -j RAMPART_REDIRECT").unwrap()
        );
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        let err = InitArgs::try_parse_from(["init", "--exclude-outbound-cidrs", "10.0.0.0/40"])
            .unwrap_err();
        assert!(err.to_string().contains("is not a prefix length"), "{err}");
        let err =
            InitArgs::try_parse_from(["init", "--exclude-outbound-cidrs", "ten/8"]).unwrap_err();
        assert!(err.to_string().contains("is not an IP address"), "{err}");
    }
}
