//! `meshctl apply` input: YAML or JSON documents parsed and validated.
//! Never panics, and what is accepted survives the store's round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_api::mesh::{Resource, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resources) = parse_documents("fuzz.yaml", text) {
        for resource in resources {
            let stored = resource.to_json();
            assert_eq!(Resource::from_json(&stored).unwrap(), resource);
        }
    }
});
