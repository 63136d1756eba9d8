//! AdmissionReview bodies as the webhooks take them: parsed, the pod
//! injected and judged by a restricted policy. Never panics; an injected
//! pod is injected only once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_api::inject::{Outcome, Template, inject_pod};
use rampart_api::policy::{self, Context, Level, Named, SecurityPolicySpec};
use rampart_control_plane::admission::review;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = review::parse(data) else {
        return;
    };
    let Some(pod) = &request.object else {
        return;
    };
    let template = Template {
        image: "rampart-proxy:fuzz".into(),
        control_plane: "cp:15012".into(),
        native_sidecar: data.len() % 2 == 0,
    };
    if let Ok(Outcome::Injected(injected)) = inject_pod(pod, &template) {
        assert!(
            matches!(inject_pod(&injected, &template), Ok(Outcome::Skipped(_))),
            "injecting twice must not add a second sidecar"
        );
    }
    let spec = SecurityPolicySpec {
        pod_security: Some(Level::Restricted),
        ..Default::default()
    };
    let named = [Named {
        source: "SecurityPolicy fuzz/restricted".into(),
        spec: &spec,
    }];
    let context = Context {
        namespace: request.namespace.as_deref().unwrap_or("default"),
        ..Default::default()
    };
    let report = policy::evaluate(pod, &context, &named);
    let _ = report.lines(policy::EnforcementAction::Enforce);
    let _ = policy::registry_lookups(pod, &named);
    let _ = policy::digest_pins(pod, &context, &named);
});
