//! Parse + classify per statement, in process: what a cache miss costs the
//! session (PostgreSQL's own grammar through pg_query, then the walk), and
//! what a hit costs, by exact text and by shape. Run with `cargo xtask
//! bench classify`.
use std::{hint::black_box, time::Instant};

use chokepoint::protocols::postgres::classify::{ClassifierCache, classify};

const STATEMENTS: usize = 20_000;
const ROUNDS: usize = 7;

/// pgbench's own statements, each made distinct so the cache never hits.
fn statements(round: usize) -> Vec<String> {
    (0..STATEMENTS)
        .map(|i| {
            let n = round * STATEMENTS + i;
            match i % 4 {
                0 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}"),
                1 => format!("UPDATE pgbench_accounts SET abalance = abalance + -{i} WHERE aid = {n}"),
                2 => format!(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, {n}, -{i}, CURRENT_TIMESTAMP)"
                ),
                _ => format!("UPDATE pgbench_tellers SET tbalance = tbalance + {i} WHERE tid = {n}"),
            }
        })
        .collect()
}

fn main() {
    let mut miss = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let sqls = statements(round);
        let start = Instant::now();
        for sql in &sqls {
            black_box(classify(black_box(sql)).expect("pgbench SQL classifies"));
        }
        miss.push(start.elapsed().as_secs_f64() * 1e6 / STATEMENTS as f64);
    }
    let cache = ClassifierCache::new(10_000);
    let hot = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    cache.classify(hot).expect("classifies");
    let start = Instant::now();
    for _ in 0..STATEMENTS {
        black_box(cache.classify(black_box(hot)).expect("cached"));
    }
    let hit = start.elapsed().as_secs_f64() * 1e6 / STATEMENTS as f64;
    // Distinct texts, but only four shapes: after the first of each, the
    // cache answers by shape (integer literals blanked) without parsing.
    let sqls = statements(ROUNDS);
    let start = Instant::now();
    for sql in &sqls {
        black_box(cache.classify(black_box(sql)).expect("classifies"));
    }
    let by_shape = start.elapsed().as_secs_f64() * 1e6 / STATEMENTS as f64;
    miss.sort_by(f64::total_cmp);
    let median = miss[ROUNDS / 2];
    println!("| measure | median of {ROUNDS} rounds × {STATEMENTS} statements | target |");
    println!("|---|---|---|");
    println!(
        "| parse + classify, cache miss (pgbench's 4 statement shapes) | {median:.2} µs (min {:.2}, max {:.2}) | ≤ 5 µs |",
        miss[0],
        miss[ROUNDS - 1]
    );
    println!("| classify, cache hit (same text) | {hit:.2} µs | |");
    println!(
        "| classify through the cache, distinct pgbench texts (hits by shape) | {by_shape:.2} µs | |"
    );
    let verdict = if median <= 5.0 { "met" } else { "MISSED" };
    println!("target ≤ 5 µs per cache-miss statement: {verdict}");
}
