//! `rampart-proxy wait`: returns once the proxy beside it is ready (its
//! admin `/ready` answers 200), or fails after a timeout. Injected as the
//! proxy container's postStart hook where native sidecars are not
//! available: the kubelet starts the next container (the app) only after
//! the hook returns, so the app never runs before its sidecar.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;

/// Wait until the local proxy is ready.
#[derive(Parser, Debug)]
#[command(name = "rampart-proxy wait")]
pub struct WaitArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
}

/// Polls `/ready` every 200 ms until it answers 200.
pub fn run(args: &WaitArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        if ready(args.admin_addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the proxy at {} was not ready after {} s",
                args.admin_addr,
                args.timeout_seconds
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ready(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    attempt().unwrap_or(false)
}
