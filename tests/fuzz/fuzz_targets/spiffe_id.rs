//! SPIFFE ID parsing: never panics, and what parses prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_certs::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let printed = id.to_string();
        assert_eq!(printed, text, "a parsed ID prints as it was written");
        assert_eq!(SpiffeId::parse(&printed).unwrap(), id);
        // No path segment a file system or router would read as a move.
        assert!(!printed.contains("/../") && !printed.ends_with("/.."));
    }
});
