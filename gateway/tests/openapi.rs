//! docs/openapi.yaml and the router agree: every route served is in the
//! spec with its method, and every operation in the spec is served. The
//! spec is served as JSON at /v1/openapi.json. (Whether answers match the
//! spec is schemathesis's part, in scripts/api-fuzz.sh.)

mod common;

use std::collections::BTreeSet;

use common::*;
use im_gateway::http::routes::{api_routes, openapi_json};
use im_gateway::Limits;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn spec_operations() -> BTreeSet<(String, String)> {
    let spec = openapi_json();
    assert_eq!(spec["openapi"], "3.1.0");
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (key, _) in item.as_object().unwrap() {
            if METHODS.contains(&key.as_str()) {
                ops.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn every_route_is_in_the_spec_and_every_operation_is_served() {
    let served: BTreeSet<(String, String)> = api_routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let spec = spec_operations();
    let missing: Vec<_> = served.difference(&spec).collect();
    let unserved: Vec<_> = spec.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "served, not in docs/openapi.yaml: {missing:?}"
    );
    assert!(
        unserved.is_empty(),
        "in docs/openapi.yaml, not served: {unserved:?}"
    );
    assert!(served.len() >= 18, "{served:?}");
}

#[test]
fn every_error_status_in_the_spec_has_the_error_shape() {
    let spec = openapi_json();
    let responses = &spec["components"]["responses"];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status.as_str() < "400" {
                    continue;
                }
                let name = answer["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/responses/"))
                    .unwrap_or_else(|| panic!("{method} {path} {status}: not a shared response"));
                let schema = &responses[name]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_is_served_as_json() {
    let s = Stack::start(Limits::default()).await;
    let (status, body) = http_get(s.gateways[0], "/v1/openapi.json", "").await;
    assert_eq!(status, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(&served, openapi_json());
}
