//! `imctl bench all --quick` as CI runs it: every sub-benchmark completes
//! against its own stack and prints positive figures, the ones the issue
//! names among them. Figures are printed, never compared with a time.

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn every_sub_benchmark_completes_with_positive_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(["bench", "all", "--quick"])
        .output()
        .expect("running imctl bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    println!("{stdout}");
    assert!(out.status.success(), "imctl bench failed: {}", out.status);
    let mut figures = BTreeMap::new();
    for line in stdout.lines() {
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a `name value` line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {value:?}: {e}"));
        assert!(value.is_finite() && value > 0.0, "{name} is {value}");
        assert!(
            figures.insert(name.to_string(), value).is_none(),
            "{name} twice"
        );
    }
    for name in [
        "ingest_acks_per_s",
        "ingest_ack_p99_ms",
        "ingest_ratio",
        "deliveries_per_s",
        "fanout_ratio",
        "rebuild_events_per_s",
        "rebuild_ratio",
        "bytes_per_idle_conn",
        "deliver_p99_ms",
    ] {
        assert!(
            figures.contains_key(name),
            "{name} missing from {figures:?}"
        );
    }
}
