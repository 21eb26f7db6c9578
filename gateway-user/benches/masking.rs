//! Masking per row, in process: what a DataRow costs the session when its
//! result has masking rules, against forwarding it untouched. Run with
//! `cargo xtask bench masking`.
//!
//! The rows are those of `cp-pgbench`'s masking workload (`customers_100`:
//! id, name, a column-masked email, a card number the detector redacts), so
//! the numbers here explain that end-to-end row.
use std::{hint::black_box, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};
use chokepoint::masking::{
    ColumnInfo, ColumnRule, Detector, DetectorRule, MaskedRow, MaskingPolicy, Strategy, oid,
};
use chokepoint::protocols::postgres::codec::{DataRow, Encode};

const ROWS: usize = 100;
const ROUNDS: usize = 2_000;
const REPEATS: usize = 7;

fn main() {
    let policy = MaskingPolicy {
        columns: vec![
            ColumnRule::parse(
                "public.customers_100.email",
                Strategy::Partial { keep_last: 4 },
                "emails",
            )
            .expect("valid rule"),
        ],
        detectors: vec![DetectorRule {
            detector: Detector::CardNumber,
            strategy: Strategy::Redact,
            name: "cards".into(),
        }],
        hash_key: Arc::from(&[7u8; 32][..]),
        ..MaskingPolicy::default()
    };
    let column = |name, type_oid| ColumnInfo {
        source: Some(("public", "customers_100", name)),
        ancestors: &[],
        output_name: name,
        type_oid,
        format: 0,
    };
    let plan = policy.plan(&[
        column("id", oid::INT4),
        column("name", oid::TEXT),
        column("email", oid::TEXT),
        column("card", oid::TEXT),
    ]);
    let rows: Vec<Bytes> = (1..=ROWS)
        .map(|g| {
            let id = g.to_string();
            let name = format!("Customer {g}");
            let email = format!("user{g}@example.com");
            let values = [
                id.as_bytes(),
                name.as_bytes(),
                email.as_bytes(),
                b"4111 1111 1111 1111",
            ];
            let mut message = BytesMut::new();
            DataRow::encode_columns(values.iter().map(Some), &mut message).expect("encodes");
            message.freeze().slice(5..)
        })
        .collect();

    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut masked = MaskedRow::default();
    let mut measure = |mask: bool| {
        let mut per_row = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            let start = Instant::now();
            for _ in 0..ROUNDS {
                out.clear();
                for body in &rows {
                    let row = DataRow::parse(black_box(body)).expect("valid row");
                    if mask && plan.mask(row.columns(), &mut masked) {
                        DataRow::encode_columns(masked.values(row.columns()), &mut out)
                            .expect("encodes");
                    } else {
                        row.encode_into(&mut out).expect("encodes");
                    }
                }
                black_box(&out);
            }
            per_row.push(start.elapsed().as_secs_f64() * 1e9 / (ROUNDS * ROWS) as f64);
        }
        per_row.sort_by(f64::total_cmp);
        per_row[REPEATS / 2]
    };
    let forward = measure(false);
    let masking = measure(true);
    println!(
        "| per DataRow (4 columns, customers_100) | median of {REPEATS} × {ROUNDS} × {ROWS} rows |"
    );
    println!("|---|---|");
    println!("| parse + forward untouched | {forward:.0} ns |");
    println!("| parse + mask (partial email, card detector) + write | {masking:.0} ns |");
    println!(
        "| masking's share of a 100-row result | {:.1} µs |",
        (masking - forward) * ROWS as f64 / 1000.0
    );
}
