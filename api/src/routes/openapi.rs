//! `GET /v1/openapi.json`: the API's contract, an OpenAPI 3.1 document written by hand in
//! `api/openapi.yaml` and served as JSON (no key). The routes are the truth; the tests below
//! fail when a `warp::path!` route, its method or its permission is missing from the document,
//! or the document names a route the code does not have. The pipeline test `openapi` checks
//! the served document with an independent validator and fuzzes the running API against it.

use warp::http::header;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

const SOURCE: &str = include_str!("../../openapi.yaml");

/// The document as JSON. Read once, at start-up: a document that does not parse fails the
/// unit tests long before it could reach a server.
pub(crate) fn document() -> serde_json::Value {
    serde_norway::from_str(SOURCE).expect("api/openapi.yaml is valid YAML (see its unit tests)")
}

pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let body = bytes::Bytes::from(serde_json::to_vec(&document()).expect("JSON serialises"));
    warp::path!("v1" / "openapi.json")
        .and(warp::get())
        .map(move || {
            let mut response = Response::new(body.clone().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response.into_response()
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde_json::Value;

    use crate::auth::{Permission, Role};

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    /// What the code says of one route: its path (parameters as `{}`), method and the
    /// permission its gate checks (`None`: no API key).
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
    struct Route {
        path: String,
        method: String,
        permission: Option<&'static str>,
    }

    /// The `x-permission` name of each permission.
    fn permission_name(p: Permission) -> &'static str {
        match p {
            Permission::ReadDocuments => "read_documents",
            Permission::Upload => "upload",
            Permission::Sign => "sign",
            Permission::SendRequests => "send_requests",
            Permission::ManageDocuments => "manage_documents",
            Permission::Export => "export",
            Permission::ReadAuditLog => "read_audit_log",
            Permission::ManageIntegrations => "manage_integrations",
            Permission::ManageAccess => "manage_access",
            Permission::ManageJobs => "manage_jobs",
            Permission::CancelContract => "cancel_contract",
        }
    }

    fn permission_named(name: &str) -> Option<Permission> {
        Permission::ALL
            .into_iter()
            .find(|p| format!("{p:?}") == name)
    }

    /// Every `warp::path!(…)` filter in `source`, with the method and permission of the chain
    /// that follows it (up to its handler, `.then(` or `.map(`). A match in a comment or a
    /// string literal (these tests' own) is not a route.
    fn routes_in(source: &str) -> Vec<Route> {
        const MACRO: &str = "warp::path!(";
        let mut routes = vec![];
        let mut from = 0;
        while let Some(found) = source[from..].find(MACRO) {
            let start = from + found;
            from = start + MACRO.len();
            let line = &source[source[..start].rfind('\n').map_or(0, |i| i + 1)..start];
            if line.ends_with('"') || line.contains("//") {
                continue;
            }
            let args_end = from + source[from..].find(')').expect("path! closes");
            let path: String = source[from..args_end]
                .split('/')
                .map(|segment| {
                    let segment = segment.trim();
                    match segment.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => format!("/{literal}"),
                        None => "/{}".to_owned(),
                    }
                })
                .collect();
            let rest = &source[args_end..];
            let chain_end = [".then(", ".map("]
                .iter()
                .filter_map(|end| rest.find(end))
                .min()
                .expect("a route chain ends in a handler");
            let chain = &rest[..chain_end];
            let method = METHODS
                .iter()
                .find(|m| chain.contains(&format!("warp::{m}()")))
                .unwrap_or_else(|| panic!("no method on the route {path}"));
            let permission = chain
                .split("Permission::")
                .nth(1)
                .map(|after| {
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric())
                        .collect();
                    permission_named(&name).unwrap_or_else(|| panic!("Permission::{name}?"))
                })
                // access.rs names its one permission once, in `manage()`.
                .or_else(|| {
                    chain
                        .contains("manage()")
                        .then_some(Permission::ManageAccess)
                })
                .map(permission_name);
            routes.push(Route {
                path,
                method: method.to_string(),
                permission,
            });
        }
        routes
    }

    fn code_routes() -> Vec<Route> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(root.join("src/routes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        // `/metrics` is the telemetry crate's route, served by the API too.
        files.push(root.join("../telemetry/src/metrics.rs"));
        let mut routes: Vec<Route> = files
            .iter()
            .flat_map(|f| routes_in(&std::fs::read_to_string(f).unwrap()))
            .collect();
        routes.sort();
        routes
    }

    fn document_routes(doc: &Value) -> Vec<Route> {
        let mut routes = vec![];
        for (path, item) in doc["paths"].as_object().unwrap() {
            let template: String = path
                .split('/')
                .skip(1)
                .map(|s| {
                    if s.starts_with('{') {
                        "/{}".to_owned()
                    } else {
                        format!("/{s}")
                    }
                })
                .collect();
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                let op = &item[*method];
                let permission = match op["x-permission"].as_str() {
                    Some("none") => None,
                    Some(name) => Some(
                        Permission::ALL
                            .into_iter()
                            .map(permission_name)
                            .find(|p| *p == name)
                            .unwrap_or_else(|| panic!("{method} {path}: x-permission {name}?")),
                    ),
                    None => panic!("{method} {path} has no x-permission"),
                };
                routes.push(Route {
                    path: template.clone(),
                    method: method.to_string(),
                    permission,
                });
            }
        }
        routes.sort();
        routes
    }

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc = super::document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert!(doc["paths"].is_object() && doc["webhooks"].is_object());
        assert!(doc["components"]["schemas"]["Problem"].is_object());
    }

    #[test]
    fn every_route_in_the_code_is_documented_and_nothing_else() {
        let code = code_routes();
        let documented = document_routes(&super::document());
        assert!(code.len() > 40, "the route scan found only {code:?}");
        let missing: Vec<_> = code.iter().filter(|r| !documented.contains(r)).collect();
        let extra: Vec<_> = documented.iter().filter(|r| !code.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes (path, method, permission) in the code but not in api/openapi.yaml: \
             {missing:#?}\nin api/openapi.yaml but not in the code: {extra:#?}"
        );
    }

    #[test]
    fn every_operation_names_the_roles_that_may_call_it_and_its_security() {
        let doc = super::document();
        let mut operation_ids = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                let op = &item[*method];
                let id = op["operationId"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path} has no operationId");
                });
                assert!(
                    operation_ids.insert(id, path).is_none(),
                    "operationId {id} twice"
                );
                let keyless = op["security"] == serde_json::json!([]);
                match op["x-permission"].as_str().unwrap() {
                    "none" => {
                        assert!(keyless, "{method} {path}: no permission but a key required");
                        assert!(op.get("x-roles").is_none());
                    }
                    name => {
                        assert!(!keyless, "{method} {path} needs {name} but no key");
                        let permission = Permission::ALL
                            .into_iter()
                            .find(|p| permission_name(*p) == name)
                            .unwrap();
                        let roles: Vec<&str> = Role::ALL
                            .into_iter()
                            .filter(|r| r.allows(permission))
                            .map(Role::as_str)
                            .collect();
                        let documented: Vec<&str> = op["x-roles"]
                            .as_array()
                            .unwrap_or_else(|| panic!("{method} {path} has no x-roles"))
                            .iter()
                            .map(|r| r.as_str().unwrap())
                            .collect();
                        assert_eq!(documented, roles, "{method} {path}: x-roles");
                        for status in ["401", "403"] {
                            assert!(
                                op["responses"].get(status).is_some(),
                                "{method} {path} needs a key: document {status}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_event_kind_is_a_documented_webhook() {
        let doc = super::document();
        // `pub const DOCUMENT_SIGNED: &str = "document.signed";` in `pub mod kind`.
        let source = include_str!("../../../jobs/src/events.rs");
        let module = source
            .split("pub mod kind {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("jobs/src/events.rs has `pub mod kind`");
        let mut kinds: Vec<&str> = module
            .lines()
            .filter_map(|line| line.split('"').nth(1))
            .collect();
        kinds.sort_unstable();
        let mut types: Vec<&str> = doc["components"]["schemas"]["EventType"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        types.sort_unstable();
        let mut webhooks: Vec<&str> = doc["webhooks"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        webhooks.sort_unstable();
        assert_eq!(types, kinds, "EventType lists the event kinds");
        assert_eq!(webhooks, kinds, "one webhook per event kind");
    }

    #[test]
    fn the_problem_schema_lists_every_slug_the_api_answers() {
        let doc = super::document();
        let mut documented: Vec<String> = doc["components"]["schemas"]["Problem"]["properties"]
            ["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        // Each slug is the string literal right after a status: `(StatusCode::X, "slug", …)`.
        let source = include_str!("../problem.rs");
        let mut slugs: Vec<String> = source
            .split("StatusCode::")
            .skip(1)
            .filter_map(|after| {
                let rest = after.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
                let rest = rest.strip_prefix(',')?.trim_start().strip_prefix('"')?;
                Some(format!(
                    "https://shomei.dev/problems/{}",
                    &rest[..rest.find('"')?]
                ))
            })
            .collect();
        documented.sort();
        slugs.sort();
        slugs.dedup();
        assert_eq!(documented, slugs);
    }
}
