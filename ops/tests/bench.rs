//! `imctl bench all --quick` as CI runs it: every sub-benchmark completes
//! against its own stack and prints positive figures, the ones the issue
//! names among them. Figures are printed, never compared with a time.

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn every_sub_benchmark_completes_with_positive_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(["bench", "all", "--quick", "--json"])
        .output()
        .expect("running imctl bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    println!("{stdout}");
    assert!(out.status.success(), "imctl bench failed: {}", out.status);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert!(report["commit"].is_string(), "{report}");
    let figures: BTreeMap<String, f64> = report["figures"]
        .as_object()
        .expect("figures")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN)))
        .collect();
    for (name, value) in &figures {
        let zero_ok =
            (name.ends_with("_events") && name.contains("backlog")) || name.starts_with("idle_");
        assert!(
            value.is_finite() && (*value > 0.0 || (zero_ok && *value == 0.0)),
            "{name} is {value}"
        );
    }
    for name in [
        "ingest_acks_per_s",
        "ingest_ack_p99_ms",
        "ingest_ratio",
        "ingest_projected_per_s",
        "ingest_backlog_events",
        "pipeline_raw_per_s",
        "ingest_pipeline_ratio",
        "ingest_cpu_us_per_msg_nats",
        "ingest_cpu_us_per_msg_stack",
        "paced_server_cpu_us_per_msg",
        "deliveries_per_s",
        "fanout_ratio",
        "fanout_bare_per_s",
        "rebuild_events_per_s",
        "rebuild_ratio",
        "verify_events_per_s",
        "verify_ratio",
        "verify_peak_rss_mb",
        "export_events_per_s",
        "export_ratio",
        "verify_incremental_secs",
        "live_fold_events_per_s",
        "validity_us_per_event",
        "validity_baseline_decode_us_per_event",
        "cold_first_send_ms",
        "cold_first_send_full_read_ms",
        "warm_send_ms",
        "status_ms",
        "bytes_per_idle_conn",
        "gateway_bytes_per_idle_conn",
        "deliver_p99_ms",
        "deliver_p99_low_ms",
        "ack_p99_half_load_ms",
        "trace_low_projector_p50_ms",
        "trace_low_published_p50_ms",
        "paced_low_server_cpu_us_per_msg",
        "idle_server_cpu_pct",
        "biggroup_cpu_ratio",
        "biggroup_large_cpu_us_per_msg",
        "biggroup_all_connected_cpu_us_per_msg",
        "scale_pinned_events_per_s",
        "scale_pool3_events_per_s",
        "scale_pool3_cpu_us_per_event",
        "scale_failover_p50_ms",
        "scale_failover_p99_ms",
        "scale_join_p50_ms",
        "search_query_p50_ms",
        "search_query_p99_ms",
        "notify_burst_per_s",
        "notify_send_path_cpu_ratio",
        "notify_notifier_cpu_us_per_msg",
        "search_rebuild_ratio",
        "search_live_indexed_per_s",
        "content_acks_ratio",
        "content_cpu_ratio",
        "content_encrypted_history_p50_ms",
        "content_encrypted_rebuild_secs",
    ] {
        assert!(
            figures.contains_key(name),
            "{name} missing from {figures:?}"
        );
    }
}

/// `imctl bench large --quick`: the large-log phase (not in `all`) runs
/// every operation to its end (it fails unless its cancelled rebuild
/// leaves the serving generations and digests as they were).
#[test]
fn the_large_log_phase_completes_every_operation() {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(["bench", "large", "--quick", "--json"])
        .output()
        .expect("running imctl bench large");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "imctl bench large failed: {}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let figures = report["figures"].as_object().expect("figures");
    for name in [
        "large_events",
        "large_caught_up_secs",
        "large_stack_peak_rss_mb_fold",
        "large_status_ms",
        "large_readyz_ms",
        "large_verify_secs",
        "large_verify_peak_rss_mb",
        "large_export_secs",
        "large_export_peak_rss_mb",
        "large_rebuild_secs",
        "large_rebuild_stack_rss_mb",
    ] {
        let v = figures[name].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{name} is {v}");
    }
}
