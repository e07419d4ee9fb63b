//! Smoke test of the harness at a tiny size: it runs end to end against the test bed's
//! broker and PostgreSQL and writes every section of its report. No timing is asserted.

use std::process::{Command, Stdio};

#[test]
fn the_tiny_preset_runs_end_to_end_and_reports_every_figure() {
    let broker = crm_tests::KafkaBroker::start();
    broker.require_transactions();
    let database = format!("crm_bench_smoke_{}", std::process::id());
    let out = std::env::temp_dir().join(format!("{database}.json"));
    let status = Command::new(env!("CARGO_BIN_EXE_crm-bench"))
        .args(["run", "--preset", "tiny", "--customers", "8"])
        .args(["--brokers", broker.brokers()])
        .args(["--database", &database])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run crm-bench: {e}"));
    assert!(status.success(), "crm-bench failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("no report: {e}"));
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON: {e}"));
    assert_eq!(report["load"]["commands_failed"], 0, "{}", report["load"]);
    assert!(report["ingest"]["http_batch"]["accepted"].as_u64() > Some(0));
    assert_eq!(
        report["ingest"]["http_batch"]["accepted"],
        report["ingest"]["bare_producer"]["delivered"]
    );
    assert_eq!(report["command_latency"]["errors"], 0);
    assert_eq!(
        report["command_latency"]["ok"], report["command_latency"]["sent"],
        "{}",
        report["command_latency"]
    );
    // the transaction shape rewrites every record, twice, and its floor counts every call
    let shape = &report["ingest"]["bare_transactional"];
    let records = &report["ingest"]["bare_producer"]["records"];
    assert_eq!(&shape["delivered"], records, "{shape}");
    assert_eq!(&shape["with_history"]["delivered"], records, "{shape}");
    let floor = &shape["single_record_transactions"];
    assert_eq!(floor["errors"], 0, "{floor}");
    assert_eq!(floor["ok"], floor["sent"], "{floor}");
    // CPU time was read for command-service and the harness (the broker here is the test
    // bed's, not a process of the run's)
    for process in ["command_service", "harness"] {
        let cpu = &report["ingest"]["http_batch"]["cpu"][process]["cpu_seconds"];
        assert!(cpu.as_f64().is_some(), "{process}: {cpu}");
    }
    let events = report["replay"]["events_applied"].as_u64().unwrap_or(0);
    assert!(events > 0);
    assert_eq!(report["embedded"]["events"].as_u64(), Some(events));
    assert!(report["replay"]["copy_baseline"]["rows"].as_u64() > Some(events));
    assert_eq!(report["freshness"]["errors"], 0);
    assert!(report["freshness"]["consumer"]["fetch_wait_max_ms"].as_u64() > Some(0));
    // the embedded default's freshness needs the `crm` binary beside crm-bench: measured
    // when it is there, else the phase says why it is not
    let embedded = &report["freshness_embedded"];
    match embedded["error"].as_str() {
        None => {
            assert_eq!(embedded["errors"], 0, "{embedded}");
            assert!(embedded["measured"].as_u64() > Some(0), "{embedded}");
        }
        Some(e) => assert!(e.contains("no `crm` binary"), "{e}"),
    }
    for phase in [
        "generate",
        "load",
        "ingest",
        "replay",
        "freshness",
        "queries",
    ] {
        assert!(
            report["phase_seconds"][phase].as_f64().is_some(),
            "no wall time for {phase}"
        );
    }
    for q in [
        "customer_360",
        "timeline_page",
        "pipeline",
        "segment_customers",
    ] {
        assert_eq!(report["queries"][q]["sample_status"], 200, "{q}");
        assert_eq!(report["queries"][q]["errors"], 0, "{q}");
    }
    assert!(report["memory"]["projection_replay_kib"].as_u64() > Some(0));
    let _ = std::fs::remove_file(&out);
    for db in [database.clone(), format!("{database}_up")] {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .status();
    }
}
