//! xDS resources as the proxy compiles them into its plan: any bytes as
//! any resource type, several at once. Never panics: a bad resource is an
//! error in the plan, not a crash of the proxy.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use rampart_api::xds::TypeUrl;
use rampart_plan::{Plan, compile};
use rampart_plan::resources::{Config, Held};

fuzz_target!(|data: &[u8]| {
    // Resources as [type][name length][name][value length: u16][value]...
    let mut config = Config::default();
    let mut rest = data;
    while rest.len() >= 4 {
        let type_url = TypeUrl::ORDER[rest[0] as usize % TypeUrl::ORDER.len()];
        let name_len = (rest[1] as usize).min(rest.len() - 4);
        let name = String::from_utf8_lossy(&rest[4..4 + name_len]).into_owned();
        let value_len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let body = &rest[4 + name_len..];
        let value_len = value_len.min(body.len());
        let held = Held {
            version: "1".into(),
            resource: Arc::new(Any {
                type_url: type_url.as_str().to_owned(),
                value: body[..value_len].to_vec(),
            }),
        };
        config
            .types
            .entry(type_url)
            .or_insert_with(BTreeMap::new)
            .insert(name, held);
        rest = &body[value_len..];
    }
    let _ = compile(&config, &Plan::new(false));
});
