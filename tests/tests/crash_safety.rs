//! kill -9 the control plane while workloads are redeeming join tokens, then
//! restart it: no token may work twice, and no token whose creation was
//! acknowledged may be lost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_tests::{ControlPlane, sign};
use tonic::Code;

const TOKENS: usize = 300;
const WORKERS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_issuance_never_lets_a_token_work_twice_or_lose_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]).await;

    // Every token here was acknowledged to its creator.
    let mut tokens = Vec::new();
    let mut admin = cp.admin().await;
    for i in 0..TOKENS {
        let token = admin
            .create_join_token(rampart_api::admin::CreateJoinTokenRequest {
                namespace: "crash".into(),
                service_account: format!("sa-{i}"),
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        tokens.push(token);
    }

    // Workers redeem tokens in order until the control plane dies.
    let next = Arc::new(Mutex::new(0usize));
    let issued = Arc::new(Mutex::new(HashSet::new()));
    let attempted = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, issued, attempted, tokens) = (
            next.clone(),
            issued.clone(),
            attempted.clone(),
            tokens.clone(),
        );
        let channel = cp.channel(None).await;
        workers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= tokens.len() {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                attempted.lock().unwrap().insert(i);
                match sign(channel.clone(), Some(&tokens[i]), None, 0).await {
                    Ok(_) => {
                        issued.lock().unwrap().insert(i);
                    }
                    Err(_) => return, // the control plane is gone
                }
            }
        }));
    }
    // Let some certificates be issued, then pull the plug mid-flight.
    while issued.lock().unwrap().len() < TOKENS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cp.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let issued_before = issued.lock().unwrap().clone();
    let attempted_before = attempted.lock().unwrap().clone();
    assert!(issued_before.len() >= TOKENS / 4);
    assert!(
        attempted_before.len() < TOKENS,
        "the kill came before every token was tried"
    );

    let cp = ControlPlane::start(dir.path(), &[]).await;
    let channel = cp.channel(None).await;
    let mut reissued_in_flight = 0;
    for (i, token) in tokens.iter().enumerate() {
        let result = sign(channel.clone(), Some(token), None, 0).await;
        if issued_before.contains(&i) {
            let Err(err) = result else {
                panic!("token {i} got a certificate before the kill and worked again after it");
            };
            assert_eq!(err.code(), Code::Unauthenticated);
            assert!(
                err.message().contains("already used"),
                "token {i}: {}",
                err.message()
            );
        } else if attempted_before.contains(&i) {
            // In flight at the kill: it may have been spent (then refused) or
            // not (then it works now), but never both.
            if result.is_ok() {
                reissued_in_flight += 1;
            }
        } else {
            result.unwrap_or_else(|e| panic!("acknowledged token {i} was lost: {e}"));
        }
        // Whatever happened, it is spent now.
        let err = sign(channel.clone(), Some(token), None, 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "token {i} worked twice");
    }
    eprintln!(
        "issued before kill: {}, in flight: {}, of which usable after restart: {reissued_in_flight}",
        issued_before.len(),
        attempted_before.len() - issued_before.len()
    );
}
