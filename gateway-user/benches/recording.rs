//! What recording adds to a statement on the session's own path: building
//! the `statement` and `result` events (text copied, one result row) and
//! handing them to the writer thread, which runs meanwhile and writes to a
//! temporary directory. Run with `cargo xtask bench recording`.
//!
//! The writer's own throughput is reported too: it decides how long the
//! disk can keep up, not what a statement waits for. A last measure gives
//! it results of 100 rows (the shape of cp-pgbench's masking workload),
//! where formatting the recorded rows is most of the writer's work.
use std::time::{Duration, Instant};

use chokepoint::{
    policy::RecordingSettings,
    recording::{Body, Identity, Recorder, sample::Sample},
};

/// Statements per timed round: 2 events each, well under the writer's
/// 64k in-flight bound, so the writer never has to catch up mid-round.
const ROUND: u32 = 10_000;
const ROUNDS: usize = 15;
/// Statements per round of the 100-row measure.
const WIDE_ROUND: u32 = 1_000;

/// 100 rows as cp-pgbench's `customers_100` table returns them, masked.
fn hundred_rows() -> Sample {
    let mut sample = Sample::default();
    for i in 0..100 {
        let id = i.to_string();
        let name = format!("Customer {i}");
        let email = format!("c***{i}@example.com");
        sample.push_row(
            [
                Some(id.as_bytes()),
                Some(name.as_bytes()),
                Some(email.as_bytes()),
                Some(&b"****-****-****-1111"[..]),
            ]
            .into_iter(),
        );
    }
    sample
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = RecordingSettings {
        dir: dir.path().join("sessions"),
        keys_dir: dir.path().join("keys"),
        ..RecordingSettings::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let recorder = Recorder::start(&settings).expect("recorder");
        let session = recorder
            .open(Body::SessionStart {
                identity: Identity {
                    pid: 1,
                    uid: 1000,
                    gid: 1000,
                    comm: "pgbench".into(),
                    cgroup_id: 1,
                job: None,
                },
                dst: "127.0.0.3:5432".into(),
                protocol: "postgres".into(),
                target: Some("bench".into()),
                decision: "allow".into(),
                rule: "bench".into(),
                mode: "enforce".into(),
            })
            .await;
        session.healthy().expect("recording opened");
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213";
        let mut per_statement = Vec::with_capacity(ROUNDS);
        let mut drain = Vec::with_capacity(ROUNDS);
        for round in 0..=ROUNDS {
            let start = Instant::now();
            for _ in 0..ROUND {
                session.record(Body::Statement {
                    text: sql.to_owned(),
                    class: "read".into(),
                    decision: "allow".into(),
                    rule: "bench".into(),
                    reason: "statement class read is allowed".into(),
                });
                // As the session keeps it: the row's wire bytes.
                let mut sample = Sample::default();
                sample.push_row([Some(&b"-4213"[..])].into_iter());
                session.record(Body::Result {
                    text: None,
                    rows: 1,
                    duration_us: 80,
                    error: None,
                    masked: false,
                    columns: vec!["abalance".into()],
                    sample,
                });
            }
            let sent = start.elapsed();
            recorder.flush().await;
            let written = start.elapsed();
            // Round 0 warms allocators and the file; not counted.
            if round > 0 {
                per_statement.push(sent / ROUND);
                drain.push(written);
            }
        }
        session.healthy().expect("no event lost");
        per_statement.sort();
        drain.sort();
        let median = per_statement[ROUNDS / 2];
        let events_per_s = f64::from(2 * ROUND) / drain[ROUNDS / 2].as_secs_f64();
        println!("| measure | median of {ROUNDS} rounds × {ROUND} statements | target |");
        println!("|---|---|---|");
        println!(
            "| recording cost on the session's path, per statement (2 events) | {:.2} µs (min {:.2}, max {:.2}) | ≤ 2 µs |",
            us(median),
            us(per_statement[0]),
            us(per_statement[ROUNDS - 1])
        );
        println!(
            "| writer: events written and fsynced per second | {events_per_s:.0} | |"
        );
        let rows = hundred_rows();
        let mut wide = Vec::with_capacity(ROUNDS);
        for round in 0..=ROUNDS {
            let start = Instant::now();
            for _ in 0..WIDE_ROUND {
                session.record(Body::Result {
                    text: None,
                    rows: 100,
                    duration_us: 300,
                    error: None,
                    masked: true,
                    columns: ["id", "name", "email", "card"].map(String::from).into(),
                    sample: rows.clone(),
                });
            }
            recorder.flush().await;
            if round > 0 {
                wide.push(start.elapsed());
            }
        }
        session.healthy().expect("no event lost");
        wide.sort();
        println!(
            "| writer: 100-row result events written and fsynced per second | {:.0} | |",
            f64::from(WIDE_ROUND) / wide[ROUNDS / 2].as_secs_f64()
        );
        let verdict = if median <= Duration::from_micros(2) {
            "met"
        } else {
            "MISSED"
        };
        println!("target ≤ 2 µs per statement: {verdict}");
        recorder.shutdown().await;
    });
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
