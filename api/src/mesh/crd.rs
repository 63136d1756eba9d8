//! The mesh kinds as Kubernetes CustomResourceDefinitions, generated from
//! the same Rust types the YAML parser uses (kube's derive and schemars),
//! so `kubectl apply` of a Rampart YAML is checked against the same schema
//! as `meshctl apply`. `deploy/crds/rampart.dev.yaml` is this output; a
//! test fails when the two differ (`RAMPART_UPDATE_CRDS=1 cargo test -p
//! rampart-api crd` rewrites the file).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::spec::{AuthorizationPolicy, MeshConfig, Service, TrafficPolicy, WorkloadEntry};

/// Every mesh CRD, in the order the kinds are documented.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        MeshConfig::crd(),
        Service::crd(),
        WorkloadEntry::crd(),
        TrafficPolicy::crd(),
        AuthorizationPolicy::crd(),
        crate::policy::SecurityPolicy::crd(),
        crate::policy::VulnerabilityReport::crd(),
    ]
}

/// The CRDs as one multi-document YAML file.
pub fn crds_yaml() -> String {
    let header = "# Generated from rampart-api's mesh types (api/src/mesh/crd.rs); do not edit.\n";
    let body = serde_saphyr::to_string_multiple(&crds()).expect("CRDs serialize to YAML");
    format!("{header}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_in_deploy_are_the_ones_the_code_generates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crds/rampart.dev.yaml"
        );
        let generated = crds_yaml();
        if std::env::var_os("RAMPART_UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "deploy/crds/rampart.dev.yaml is not what the mesh types generate; \
             run `RAMPART_UPDATE_CRDS=1 cargo test -p rampart-api crd` and commit it"
        );
    }

    #[test]
    fn every_kind_is_in_group_rampart_dev_with_a_structural_schema() {
        for crd in crds() {
            assert_eq!(crd.spec.group, "rampart.dev");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            let schema = version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            let properties = schema.properties.as_ref().unwrap();
            assert!(properties.contains_key("spec"), "{}", crd.spec.names.kind);
        }
    }
}
