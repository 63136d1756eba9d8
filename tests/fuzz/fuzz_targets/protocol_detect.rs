//! The proxy's protocol detection on the first bytes of a connection:
//! never panics, and a verdict never changes as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_proxy::proxy::detect::classify;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len() {
        let verdict = classify(&data[..end]);
        if let Some(previous) = decided {
            assert_eq!(verdict, Some(previous), "a decided protocol changed");
        }
        decided = decided.or(verdict);
    }
});
