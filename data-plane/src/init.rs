//! `rampart-proxy init`: the iptables rules that send a workload's TCP
//! traffic through its sidecar (run once per pod or VM network namespace,
//! as root, before the app starts). Inbound TCP goes to the inbound capture
//! port, outbound TCP to the outbound capture port; the proxy's own traffic
//! (its UID), loopback, and the excluded ports and CIDRs are left alone.
//! The same rules go to IPv4 (`iptables`) and IPv6 (`ip6tables`), in chains
//! of their own (`RAMPART_*`). Both rule sets are checked (`--test`) before
//! either is applied, and each is applied in one transaction, so a rule set
//! the kernel refuses leaves nothing behind.

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
    /// Outbound destinations left alone, as IPv4 or IPv6 CIDRs (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    exclude_outbound_cidrs: Vec<String>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// `IP/LEN` with a valid IPv4 or IPv6 address and length (a bare address
/// is one host).
fn parse_cidr(s: &str) -> Result<String, String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.map_or(Ok(max), str::parse::<u8>) {
        Ok(l) if l <= max => Ok(format!("{ip}/{l}")),
        _ => Err(format!(
            "{s:?}: {:?} is not a prefix length (0-{max})",
            len.unwrap_or_default()
        )),
    }
}

/// An IP family and the tool that takes its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == Family::V6)
    }
}

/// The rules of one family, in `iptables-restore` format (table `nat`).
pub fn rules(args: &InitArgs, family: Family) -> String {
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
    r.push_str(&format!(
        "-A RAMPART_OUTPUT -d {} -j RETURN\n",
        family.loopback()
    ));
    for cidr in args
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| family.holds(c))
    {
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

/// Feeds `text` to `family`'s restore tool (`--test`: only checks it).
fn restore(family: Family, text: &str, test: bool) -> anyhow::Result<()> {
    let tool = family.restore();
    let mut command = Command::new(tool);
    command.arg("--noflush");
    if test {
        command.arg("--test");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "running {tool} (install iptables; run as root in the workload's network namespace)"
            )
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .with_context(|| format!("writing the rules to {tool}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{tool} refused the rules (nothing was applied): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Prints or applies the rules, IPv4 and IPv6.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let sets = [Family::V4, Family::V6].map(|f| (f, rules(args, f)));
    if args.dry_run {
        for (family, text) in &sets {
            println!("# {}", family.restore());
            print!("{text}");
        }
        return Ok(());
    }
    for (family, text) in &sets {
        restore(*family, text, true)?;
    }
    for (family, text) in &sets {
        restore(*family, text, false)?;
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
        let text = rules(&args, Family::V4);
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
        let err = InitArgs::try_parse_from(["init", "--exclude-outbound-cidrs", "fd00::/129"])
            .unwrap_err();
        assert!(err.to_string().contains("(0-128)"), "{err}");
    }

    #[test]
    fn each_family_gets_its_own_loopback_and_cidrs() {
        let args = InitArgs::parse_from([
            "init",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00:10:96::/112,192.168.1.1",
        ]);
        let (v4, v6) = (rules(&args, Family::V4), rules(&args, Family::V6));
        assert!(v4.contains("-d 127.0.0.1/32 -j RETURN") && !v4.contains("::1/128"));
        assert!(v6.contains("-d ::1/128 -j RETURN") && !v6.contains("127.0.0.1"));
        assert!(v4.contains("-d 10.96.0.0/12 -j RETURN"));
        assert!(v4.contains("-d 192.168.1.1/32 -j RETURN"));
        assert!(!v4.contains("fd00"));
        assert!(v6.contains("-d fd00:10:96::/112 -j RETURN"));
        assert!(!v6.contains("10.96.0.0"));
        // The redirects are the same in both.
        for text in [&v4, &v6] {
            assert!(text.contains("REDIRECT --to-ports 15006"));
            assert!(text.contains("REDIRECT --to-ports 15001"));
        }
    }
}
