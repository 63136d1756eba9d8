//! CSR-to-SVID signing throughput and latency through the real gRPC service,
//! next to the raw ECDSA P-256 sign and verify rates measured in the same run
//! with the same crypto library (ring). Turning a CSR into an SVID costs one
//! verification (the CSR) and one signature (the certificate), so the
//! physical ceiling per core is 1 / (1/sign + 1/verify).
//!
//! Run: `cargo bench -p rampart-control-plane --bench ca_signing`
//! The control plane is pinned to one core with `taskset` when available.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ControlPlane;
use rampart_api::ca::SignRequest;
use rampart_api::ca::certificate_service_client::CertificateServiceClient;
use rampart_certs::{KeyAndCsr, VerifiedCsr};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

const MEASURE: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 64;
const CONNECTIONS: usize = 4;

fn rate(mut op: impl FnMut()) -> f64 {
    for _ in 0..200 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MEASURE {
        for _ in 0..100 {
            op();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn raw_rates() -> (f64, f64) {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let message = [7u8; 400]; // about the size of a certificate's TBS
    let sign = rate(|| {
        std::hint::black_box(key.sign(&rng, &message).unwrap());
    });
    let sig = key.sign(&rng, &message).unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    let verify = rate(|| {
        public.verify(&message, sig.as_ref()).unwrap();
    });
    (sign, verify)
}

fn in_process_rate() -> f64 {
    let td = rampart_certs::TrustDomain::new("bench.local").unwrap();
    let root = rampart_certs::CertificateAuthority::generate_root(&td).unwrap();
    let ca = rampart_certs::CertificateAuthority::from_root_pem(
        td.clone(),
        &root.cert_pem,
        &root.key_pem,
        Default::default(),
    )
    .unwrap();
    let id = td.workload_id("bench", "client").unwrap();
    let csr = KeyAndCsr::generate().unwrap().csr_der;
    rate(|| {
        let verified = VerifiedCsr::from_der(&csr).unwrap();
        std::hint::black_box(ca.sign(&verified, &id, None).unwrap());
    })
}

struct Round {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_svid: f64,
}

async fn service_rounds(service: &ControlPlane, rounds: usize) -> Vec<Round> {
    // Renewal proof: an SVID over mTLS (the admin's will do; the CA signs a
    // new certificate per request either way).
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(CertificateServiceClient::new(service.channel().await));
    }
    // Keys and CSRs are made before the clock starts: they are the client's cost.
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..512)
            .map(|_| KeyAndCsr::generate().unwrap().csr_der)
            .collect(),
    );
    let run = |duration: Duration| {
        let mut tasks = Vec::new();
        for i in 0..CONCURRENCY {
            let mut client = clients[i % CONNECTIONS].clone();
            let csrs = csrs.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let start = Instant::now();
                let mut n = i;
                while start.elapsed() < duration {
                    let request = SignRequest {
                        csr_der: csrs[n % csrs.len()].clone(),
                        ttl_seconds: 0,
                    };
                    let t = Instant::now();
                    client.sign(request).await.expect("signing failed");
                    latencies.push(t.elapsed());
                    n += CONCURRENCY;
                }
                latencies
            }));
        }
        tasks
    };
    for task in run(Duration::from_millis(500)) {
        task.await.unwrap(); // warm-up
    }
    let mut results = Vec::new();
    for _ in 0..rounds {
        let (start, cpu_start) = (Instant::now(), service.cpu_seconds());
        let mut latencies = Vec::new();
        for task in run(MEASURE) {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = service.cpu_seconds() - cpu_start;
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        results.push(Round {
            throughput: latencies.len() as f64 / elapsed,
            p50: pct(0.50),
            p99: pct(0.99),
            cpu_per_svid: cpu / latencies.len() as f64,
        });
    }
    results.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    results
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing
    }
    // The load generator runs on the other core, so the two do not compete.
    if std::env::var_os("RAMPART_BENCH_PINNED").is_none()
        && Command::new("taskset").arg("-V").output().is_ok()
    {
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("RAMPART_BENCH_PINNED", "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    // Raw rates on core 0, where the control plane will run; measured before
    // and after the service so that drift of a noisy machine averages out.
    let pin_self = |cpu: &str| {
        let _ = Command::new("taskset")
            .args(["-p", "-c", cpu, &std::process::id().to_string()])
            .output();
    };
    pin_self("0");
    let (sign_before, verify_before) = raw_rates();
    let in_process = in_process_rate();
    pin_self("1");
    let service = ControlPlane::start();
    let pinned = service.pinned;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = runtime.block_on(service_rounds(&service, 3));
    drop(service);
    pin_self("0");
    let (sign_after, verify_after) = raw_rates();
    let (sign, verify) = (
        (sign_before + sign_after) / 2.0,
        (verify_before + verify_after) / 2.0,
    );
    let ceiling = 1.0 / (1.0 / sign + 1.0 / verify);
    let median = &rounds[rounds.len() / 2];

    println!(
        "CA signing, one core ({}):",
        if pinned {
            "control plane pinned with taskset -c 0, load on core 1"
        } else {
            "not pinned: taskset missing"
        }
    );
    println!(
        "  {:<46} {:>10.0} /s  (before {sign_before:.0}, after {sign_after:.0})",
        "raw ECDSA P-256 sign (ring)", sign
    );
    println!(
        "  {:<46} {:>10.0} /s  (before {verify_before:.0}, after {verify_after:.0})",
        "raw ECDSA P-256 verify (ring)", verify
    );
    println!(
        "  {:<46} {:>10.0} /s",
        "ceiling: 1 verify + 1 sign per SVID", ceiling
    );
    println!(
        "  {:<46} {:>10.0} /s  ({:.2} of ceiling)",
        "CA in process (parse+verify CSR, build, sign)",
        in_process,
        in_process / ceiling
    );
    println!(
        "  {:<46} {:>10.0} /s  ({:.2} of ceiling)  p50 {:.2} ms  p99 {:.2} ms  ({CONCURRENCY} in flight, {CONNECTIONS} mTLS connections; median of {})",
        "gRPC CertificateService.Sign (real process)",
        median.throughput,
        median.throughput / ceiling,
        median.p50.as_secs_f64() * 1e3,
        median.p99.as_secs_f64() * 1e3,
        rounds.len()
    );
    println!(
        "  {:<46} {:>10.0} us  (crypto alone: {:.0} us, {:.2} of the CPU)",
        "control-plane CPU per SVID",
        median.cpu_per_svid * 1e6,
        1e6 / ceiling,
        (1.0 / ceiling) / median.cpu_per_svid
    );
    let all: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.0}", r.throughput))
        .collect();
    println!("  rounds (SVIDs/s): {}", all.join(", "));
}
