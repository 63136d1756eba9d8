//! `meshctl proxy-config NODE`: the xDS resources rampart-control serves
//! one connected proxy, as a table or as Envoy's own proto3 JSON (decoded
//! with the descriptors of the Envoy API compiled in by build.rs).

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use rampart_api::admin::{ProxyConfigRequest, ProxyResource};

use crate::client::Target;
use crate::mesh::Output;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Prints what `node_id` is served, optionally only resources of `kind`
/// (sds, cds, eds, lds or rds).
pub async fn proxy_config(
    target: &Target,
    node_id: &str,
    kind: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    if let Some(k) = kind
        && !["sds", "cds", "eds", "lds", "rds"].contains(&k)
    {
        anyhow::bail!("--type {k:?}: expected one of sds, cds, eds, lds, rds");
    }
    let response = target
        .admin()
        .await?
        .proxy_config(ProxyConfigRequest {
            node_id: node_id.to_owned(),
        })
        .await
        .map_err(crate::client::rpc_error)?
        .into_inner();
    let resources: Vec<&ProxyResource> = response
        .resources
        .iter()
        .filter(|r| kind.is_none_or(|k| r.r#type == k))
        .collect();
    match output {
        Output::Table => {
            let rows: Vec<Vec<String>> = resources
                .iter()
                .map(|r| vec![r.r#type.to_uppercase(), r.name.clone(), r.version.clone()])
                .collect();
            crate::table::print(&["TYPE", "NAME", "VERSION"], &rows);
        }
        Output::Json | Output::Yaml => {
            let pool = DescriptorPool::decode(DESCRIPTORS)?;
            let value = resources
                .iter()
                .map(|r| to_json(&pool, r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if matches!(output, Output::Json) {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_saphyr::to_string(&value)?);
            }
        }
    }
    Ok(())
}

/// `{type, name, version, resource}` with the resource in proto3 JSON.
fn to_json(pool: &DescriptorPool, r: &ProxyResource) -> anyhow::Result<serde_json::Value> {
    let full_name = r.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| anyhow::anyhow!("{}: unknown message type {full_name}", r.name))?;
    let message = DynamicMessage::decode(descriptor, r.value.as_slice())?;
    let options = SerializeOptions::new().stringify_64_bit_integers(false);
    let resource = message.serialize_with_options(serde_json::value::Serializer, &options)?;
    Ok(serde_json::json!({
        "type": r.r#type,
        "name": r.name,
        "version": r.version,
        "resource": resource,
    }))
}
