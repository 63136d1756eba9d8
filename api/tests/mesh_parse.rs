//! The mesh model's YAML: what parses, and the precise errors for what does not.

use rampart_api::mesh::{Kind, LoadBalancer, Protocol, Resource, parse_documents};

const EXAMPLE: &str = r#"
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: grpc, port: 50051, protocol: grpc}, {name: http, port: 8080, protocol: http}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: default, labels: {app: echo, version: v1}}
spec: {service: echo, address: 127.0.0.1, ports: {grpc: 50061, http: 18081}, serviceAccount: echo}
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: echo-split, namespace: default}
spec:
  service: echo
  split: [{subset: {version: v1}, weight: 80}, {subset: {version: v2}, weight: 20}]
  retries: {attempts: 2, retryOn: [connect-failure, 5xx]}
  timeout: 2s
  loadBalancer: ROUND_ROBIN
"#;

fn errors(text: &str) -> Vec<String> {
    parse_documents("test.yaml", text)
        .expect_err("must be refused")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_documented_example_parses() {
    let resources = parse_documents("example.yaml", EXAMPLE).unwrap();
    assert_eq!(resources.len(), 3);
    let Resource::Service(svc) = &resources[0] else {
        panic!()
    };
    assert_eq!(svc.spec.ports[0].protocol, Protocol::Grpc);
    let Resource::WorkloadEntry(we) = &resources[1] else {
        panic!()
    };
    assert_eq!(we.spec.ports["http"], 18081);
    assert_eq!(we.metadata.labels["version"], "v1");
    assert!(
        !we.spec.sidecar,
        "plain WorkloadEntries have no sidecar by default"
    );
    let Resource::TrafficPolicy(tp) = &resources[2] else {
        panic!()
    };
    assert_eq!(tp.spec.load_balancer, Some(LoadBalancer::RoundRobin));
    assert_eq!(
        resources[2].key().to_string(),
        "TrafficPolicy default/echo-split"
    );
}

#[test]
fn canonical_json_round_trips() {
    for resource in parse_documents("example.yaml", EXAMPLE).unwrap() {
        assert_eq!(Resource::from_json(&resource.to_json()).unwrap(), resource);
    }
}

#[test]
fn json_input_is_accepted() {
    let json = r#"{"apiVersion":"rampart.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"name":"p","port":80,"protocol":"tcp"}]}}"#;
    let resources = parse_documents("a.json", json).unwrap();
    assert_eq!(resources[0].key().namespace, "default");
}

#[test]
fn a_typo_names_the_document_the_resource_and_the_field() {
    let text = EXAMPLE.replace("retryOn", "retry_on");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("test.yaml: document 3 (TrafficPolicy default/echo-split): spec.retries"),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("retry_on"), "{}", errs[0]);
}

#[test]
fn one_bad_document_refuses_the_whole_input_and_lists_every_problem() {
    let text = EXAMPLE
        .replace("protocol: http}", "protocol: htp}")
        .replace("weight: 20", "weight: 30");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("document 1 (Service default/echo): spec.ports[1].protocol"),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("htp"), "{}", errs[0]);
    assert!(
        errs[1].contains("document 3") && errs[1].contains("sum to 110"),
        "{}",
        errs[1]
    );
}

#[test]
fn semantic_checks_say_what_is_wrong() {
    let cases = [
        (
            "port: 50051",
            "port: 0",
            "spec.ports[0].port: must be 1-65535",
        ),
        ("address: 127.0.0.1", "address: not-an-ip", "spec.address"),
        ("attempts: 2", "attempts: 20", "out of range 1-10"),
        ("timeout: 2s", "timeout: 2 seconds", "spec.timeout"),
        ("timeout: 2s", "timeout: 99999999d", "longer than 365d"),
        (
            "connect-failure, 5xx",
            "connect-failure, sometimes",
            "spec.retries.retryOn[1]",
        ),
        ("name: echo-v1", "name: Echo_V1", "metadata.name"),
        (
            "protocol: http}]\n",
            "protocol: http}]\n  addresses: [10.96.0.10, 10.96.0.1O]\n",
            "spec.addresses[1]: \"10.96.0.1O\" is not an IP address",
        ),
        (
            "protocol: http}]\n",
            "protocol: http}]\n  addresses: [127.0.0.5]\n",
            "spec.addresses[0]: 127.0.0.5 cannot be a service address",
        ),
        (
            "protocol: http}]\n",
            "protocol: http}]\n  addresses: [\"fd00::a\", \"fd00:0::a\"]\n",
            "spec.addresses[1]: fd00:0::a is listed twice",
        ),
    ];
    for (from, to, expected) in cases {
        let errs = errors(&EXAMPLE.replacen(from, to, 1));
        assert!(errs.iter().any(|e| e.contains(expected)), "{to}: {errs:?}");
    }
}

#[test]
fn service_addresses_parse() {
    let text = EXAMPLE.replacen(
        "protocol: http}]\n",
        "protocol: http}]\n  addresses: [10.96.0.10, \"fd00::a\"]\n",
        1,
    );
    let resources = parse_documents("vip.yaml", &text).unwrap();
    let Resource::Service(service) = &resources[0] else {
        panic!("not a service: {:?}", resources[0]);
    };
    assert_eq!(service.spec.addresses, ["10.96.0.10", "fd00::a"]);
}

#[test]
fn envelope_errors() {
    let wrong_version = EXAMPLE.replacen("rampart.dev/v1alpha1", "rampart.dev/v2", 1);
    assert!(errors(&wrong_version)[0].contains("apiVersion: is \"rampart.dev/v2\""));
    let wrong_kind = EXAMPLE.replacen("kind: Service", "kind: Servise", 1);
    assert!(errors(&wrong_kind)[0].contains("unknown kind \"Servise\""));
    assert!(errors("a: [unclosed")[0].contains("not valid YAML"));
    assert!(errors("")[0].contains("no resources"));
    assert!(errors("- 1\n- 2")[0].contains("must be a mapping"));
    let twice = format!("{EXAMPLE}\n---\n{}", EXAMPLE.split("---").next().unwrap());
    assert!(errors(&twice).iter().any(|e| e.contains("appears twice")));
}

#[test]
fn authorization_policies_are_checked() {
    let policy = r#"
apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-frontend, namespace: shop}
spec:
  selector: {app: cart}
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]}]
    to: [{methods: [GET, POST], paths: ["/api/*"], ports: [8080]}]
"#;
    let resources = parse_documents("p.yaml", policy).unwrap();
    assert_eq!(resources[0].kind(), Kind::AuthorizationPolicy);
    let bad = policy
        .replace("spiffe://cluster.local/ns/ops/*", "ops/*")
        .replace("GET", "get");
    let errs = errors(&bad);
    assert!(errs.iter().any(|e| e.contains("principals[1]")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("methods[0]")), "{errs:?}");
}

#[test]
fn kinds_parse_as_users_type_them() {
    assert_eq!(Kind::parse("services"), Some(Kind::Service));
    assert_eq!(Kind::parse("svc"), Some(Kind::Service));
    assert_eq!(Kind::parse("WorkloadEntries"), Some(Kind::WorkloadEntry));
    assert_eq!(Kind::parse("trafficpolicy"), Some(Kind::TrafficPolicy));
    assert_eq!(Kind::parse("pods"), None);
}

#[test]
fn oversized_inputs_are_refused_with_what_to_do() {
    let one = EXAMPLE.split("---").next().unwrap();
    let many: Vec<String> = (0..1100)
        .map(|i| one.replace("name: echo,", &format!("name: echo-{i},")))
        .collect();
    let errs = errors(&many.join("\n---\n"));
    assert!(
        errs[0].contains("split it into several files"),
        "{}",
        errs[0]
    );
}

#[test]
fn mesh_config_timeouts_and_access_log_are_checked() {
    let good = "apiVersion: rampart.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  accessLog: true\n  connections: {httpIdleTimeout: 0s, requestHeadersTimeout: 10s}\n";
    let resources = parse_documents("mesh.yaml", good).unwrap();
    let Resource::MeshConfig(m) = &resources[0] else {
        panic!()
    };
    assert!(m.spec.access_log);
    assert_eq!(m.spec.connections.http_idle_timeout.as_deref(), Some("0s"));
    let bad = "apiVersion: rampart.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  connections: {tcpIdleTimeout: 10, requestHeadersTimeout: 400d, idle: 1s}\n";
    let all = errors(bad).join("\n");
    // The unknown key is refused first, by name.
    assert!(all.contains("idle"), "{all}");
    let bad = "apiVersion: rampart.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  connections: {tcpIdleTimeout: \"10\", requestHeadersTimeout: 400d}\n";
    let all = errors(bad).join("\n");
    assert!(
        all.contains("spec.connections.tcpIdleTimeout") && all.contains("needs a unit"),
        "{all}"
    );
    assert!(
        all.contains("spec.connections.requestHeadersTimeout") && all.contains("longer than 365d"),
        "{all}"
    );
}

#[test]
fn rate_limits_are_checked() {
    let policy = |limit: &str| {
        format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p, namespace: default}}\nspec: {{service: s, rateLimit: {limit}}}\n"
        )
    };
    assert!(parse_documents("ok.yaml", &policy("{requestsPerSecond: 100, burst: 20}")).is_ok());
    let all = errors(&policy("{requestsPerSecond: 0, burst: 0}")).join("\n");
    assert!(
        all.contains("spec.rateLimit.requestsPerSecond: 0 is out of range"),
        "{all}"
    );
    assert!(
        all.contains("spec.rateLimit.burst: 0 lets nothing through"),
        "{all}"
    );
}

#[test]
fn a_workload_entry_locality_is_checked() {
    let entry = |locality: &str| {
        format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: e, namespace: default}}\nspec: {{service: s, address: 10.0.0.1, ports: {{http: 80}}, locality: \"{locality}\"}}\n"
        )
    };
    assert!(parse_documents("ok.yaml", &entry("us-east1/b")).is_ok());
    let all = errors(&entry("us east1")).join("\n");
    assert!(
        all.contains("spec.locality: \"us east1\" is not a locality"),
        "{all}"
    );
}
