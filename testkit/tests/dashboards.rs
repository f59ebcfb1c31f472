//! Checks of `dashboards/`: the Prometheus config and alert rules pass promtool (syntax and
//! their unit tests), and the Grafana dashboard and the rules ask only for metrics the code
//! exposes. Needs `promtool` (Debian package `prometheus`, installed by
//! `scripts/prepare-machine.sh`); starts no Shomei process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shomei_testkit::workspace_root;

/// Every metric the Shomei processes expose (`telemetry/src/metrics.rs`) plus the process
/// collector's and Prometheus's own `up`. Histograms are listed by their base name.
const KNOWN_METRICS: &[&str] = &[
    "shomei_build_info",
    "shomei_jobs_submitted_total",
    "shomei_jobs_finished_total",
    "shomei_job_duration_seconds",
    "shomei_job_queue_wait_seconds",
    "shomei_job_failures_total",
    "shomei_jobs_swept_total",
    "shomei_group_commit_size",
    "shomei_group_commit_duration_seconds",
    "shomei_group_commit_splits_total",
    "shomei_queue_depth",
    "shomei_queue_oldest_age_seconds",
    "shomei_documents_signed_total",
    "shomei_hsm_pool_sessions",
    "shomei_hsm_pool_max_sessions",
    "shomei_hsm_session_wait_seconds",
    "shomei_hsm_sign_duration_seconds",
    "shomei_hsm_errors_total",
    "shomei_hsm_calls_abandoned_total",
    "shomei_tsa_client_request_duration_seconds",
    "shomei_tsa_client_failures_total",
    "shomei_tsa_tokens_issued_total",
    "shomei_tsa_requests_total",
    "shomei_webhook_deliveries_total",
    "shomei_webhook_endpoints_disabled_total",
    "shomei_emails_total",
    "shomei_http_requests_total",
    "shomei_http_request_duration_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
];

/// The histograms among them: only these may be queried with `_bucket`, `_sum`, `_count`.
const HISTOGRAMS: &[&str] = &[
    "shomei_job_duration_seconds",
    "shomei_job_queue_wait_seconds",
    "shomei_group_commit_size",
    "shomei_group_commit_duration_seconds",
    "shomei_hsm_session_wait_seconds",
    "shomei_hsm_sign_duration_seconds",
    "shomei_tsa_client_request_duration_seconds",
    "shomei_http_request_duration_seconds",
];

fn dashboards() -> PathBuf {
    workspace_root().join("dashboards")
}

/// Runs promtool from the workspace root; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the Debian package `prometheus` (scripts/prepare-machine.sh)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with --nocapture, and with a failing test.
    eprintln!("$ promtool {}\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = dashboards().join("grafana/shomei.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel that shows data: rows are left out, the panels inside collapsed rows are not.
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
        for panel in panels {
            if panel["type"] == "row" {
                walk(panel["panels"].as_array().map_or(&[], Vec::as_slice), out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// Every `targets[].expr` of the dashboard, in panel order.
fn dashboard_exprs() -> Vec<String> {
    let dashboard = dashboard();
    data_panels(&dashboard)
        .into_iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

/// Metric names (`shomei_…`, `process_…`) mentioned in a PromQL expression or rules file.
/// Label values such as `job="shomei-worker"` do not match: a name needs an underscore.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut names = BTreeSet::new();
    for prefix in ["shomei_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|i| from + i) {
            let mut end = at + prefix.len();
            while end < bytes.len() && is_name(bytes[end]) {
                end += 1;
            }
            let standalone = at == 0 || !(is_name(bytes[at - 1]) || bytes[at - 1] == b':');
            if standalone {
                names.insert(text[at..end].to_owned());
            }
            from = end;
        }
    }
    names
}

/// Names not in [`KNOWN_METRICS`], after taking the histogram suffixes off histograms.
fn unknown_metrics(names: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| HISTOGRAMS.contains(base))
                .unwrap_or(name);
            !KNOWN_METRICS.contains(&base)
        })
        .cloned()
        .collect()
}

/// `- alert: Name` lines of the rules file.
fn alert_names() -> Vec<String> {
    read(&dashboards().join("prometheus/alerts.yml"))
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "dashboards/prometheus/alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "dashboards/prometheus/alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_prometheus_config_is_valid_and_loads_the_alert_rules() {
    let out = promtool(&["check", "config", "dashboards/prometheus/prometheus.yml"]);
    assert!(out.contains("1 rule files found"), "{out}");
    let config = read(&dashboards().join("prometheus/prometheus.yml"));
    for job in ["shomei-api", "shomei-worker", "shomei-tsa"] {
        assert!(
            config.contains(&format!("job_name: {job}")),
            "no scrape job {job}: the rules and the dashboard select by it"
        );
    }
}

#[test]
fn every_alert_has_unit_tests_and_a_readme_entry() {
    let alerts = alert_names();
    assert!(alerts.len() >= 6, "too few alerts: {alerts:?}");
    let tests = read(&dashboards().join("prometheus/alerts_test.yml"));
    let readme = read(&dashboards().join("README.md"));
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test in alerts_test.yml"
        );
        assert!(
            readme.contains(alert.as_str()),
            "{alert} is not explained in dashboards/README.md"
        );
    }
}

#[test]
fn the_alert_rules_use_only_metrics_the_code_exposes() {
    let rules = read(&dashboards().join("prometheus/alerts.yml"));
    let names = metric_names(&rules);
    assert!(!names.is_empty());
    assert_eq!(
        unknown_metrics(&names),
        Vec::<String>::new(),
        "unknown metrics in alerts.yml"
    );
}

#[test]
fn every_dashboard_panel_has_a_datasource_and_a_query() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let uses_variable = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .any(|var| var["name"] == "DS_PROMETHEUS" && var["type"] == "datasource");
    assert!(
        uses_variable,
        "the DS_PROMETHEUS data source variable is missing"
    );

    let panels = data_panels(&dashboard);
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        let uid = panel["datasource"]["uid"].as_str().unwrap_or("");
        assert!(
            uid == "${DS_PROMETHEUS}" || uid == "prometheus",
            "{title}: datasource {:?}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            // The exprs are run as-is against Prometheus (here by promtool, later by the
            // end-to-end test), so no Grafana variables such as $__rate_interval.
            assert!(!expr.contains('$'), "{title}: Grafana variable in {expr}");
        }
    }
}

#[test]
fn the_dashboard_uses_only_metrics_the_code_exposes() {
    let exprs = dashboard_exprs();
    let names: BTreeSet<String> = exprs.iter().flat_map(|expr| metric_names(expr)).collect();
    assert_eq!(
        unknown_metrics(&names),
        Vec::<String>::new(),
        "unknown metrics in shomei.json"
    );
    // And the operators' essentials are all there.
    for needed in [
        "shomei_documents_signed_total",
        "shomei_queue_depth",
        "shomei_queue_oldest_age_seconds",
        "shomei_job_duration_seconds_bucket",
        "shomei_job_queue_wait_seconds_bucket",
        "shomei_job_failures_total",
        "shomei_hsm_pool_max_sessions",
        "shomei_hsm_sign_duration_seconds_bucket",
        "shomei_tsa_client_failures_total",
        "shomei_webhook_endpoints_disabled_total",
        "shomei_emails_total",
        "shomei_http_requests_total",
        "process_resident_memory_bytes",
    ] {
        assert!(names.contains(needed), "no panel shows {needed}");
    }
    assert!(
        exprs
            .iter()
            .any(|e| e == "sum(rate(shomei_documents_signed_total[1m]))"),
        "the docs/s throughput query is missing"
    );
}

/// promtool parses PromQL only in rule files, so every dashboard query becomes a recording
/// rule of a throwaway one (JSON is YAML).
#[test]
fn every_dashboard_query_is_valid_promql() {
    let rules: Vec<Value> = dashboard_exprs()
        .into_iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr }))
        .collect();
    let count = rules.len();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = workspace_root().join("target/tmp/dashboards");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("queries-{}.yml", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );
}

#[test]
fn metric_names_are_found_with_histogram_suffixes_and_without_label_values() {
    let names = metric_names(
        r#"histogram_quantile(0.5, sum by (le) (rate(shomei_job_duration_seconds_bucket{job="shomei-worker"}[5m]))) / dashboard:shomei_x"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["shomei_job_duration_seconds_bucket".to_owned()])
    );
    assert!(unknown_metrics(&names).is_empty());
    let wrong = BTreeSet::from([
        "shomei_queue_depth_count".to_owned(),
        "shomei_nope".to_owned(),
    ]);
    assert_eq!(
        unknown_metrics(&wrong),
        wrong.into_iter().collect::<Vec<_>>()
    );
}
