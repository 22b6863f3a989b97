//! `imctl check` as CI runs it, on one node, on a 3-node cluster and with a
//! pool of three projectors: the workload runs through its faults and the
//! checker finds nothing. (The
//! checker's own tests, in `analysis.rs`, show each finding is findable.)

use std::process::Command;

fn check(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "check",
            "--duration",
            "45",
            "--fault-interval",
            "6",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("running imctl check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON report");
    assert!(
        out.status.success(),
        "imctl check {extra:?}: {}",
        report["findings"]
    );
    report
}

fn assert_exercised(report: &serde_json::Value) {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert!(n("stored") > 1_000, "{report}");
    assert!(n("membership_changes") > 10, "{report}");
    assert!(
        report["faults"].as_array().map_or(0, Vec::len) >= 4,
        "{report}"
    );
}

#[test]
fn sends_membership_changes_and_faults_leave_a_log_the_checker_accepts() {
    // One after the other: each starts its own servers, and CI has 2 cores.
    assert_exercised(&check(&[]));
    assert_exercised(&check(&["--cluster"]));
}

/// Three projectors in the pool: an owner killed past the lease, one
/// SIGTERMed, a partition moved, among the other faults; members
/// connected throughout hold every event once, nothing is fanned out
/// twice, and every partition's owner verifies against a rebuild.
#[test]
fn a_pool_of_three_survives_owner_kills_stops_and_moves() {
    let report = check(&["--projectors", "3"]);
    assert_exercised(&report);
    let faults = report["faults"].to_string();
    for fault in ["kill -9 check-", "SIGTERM check-", "move partition"] {
        assert!(faults.contains(fault), "{fault}: {faults}");
    }
}
