//! What decoding a value costs: PostgreSQL's binary `numeric` through pgpulse's exact decoder
//! (to its decimal text, then a correctly rounded `f64`) against `float8` and `int8`, per
//! value, in the relation pass's and the catalog's hot path. The figure backs the choice,
//! documented in `src/sampler/cell.rs`, to keep the hand-written decoder. Run:
//! `cargo bench --bench decode`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use pgpulse::sampler::cell::Cell;
use tokio_postgres::types::{FromSql, Type};

/// The binary form of a `numeric`: digit count, weight, sign, display scale, base-10000 digits.
fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [digits.len() as u16, weight as u16, sign, dscale] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    for d in digits {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

/// Nanoseconds per decode of `raw` as `ty`, value taken as a number, over `n` rounds.
fn per_value(ty: &Type, raw: &[u8], n: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let cell = Cell::from_sql(black_box(ty), black_box(raw)).unwrap();
        black_box(cell.number().unwrap());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let n = 2_000_000;
    let cases: [(&str, Type, Vec<u8>); 4] = [
        (
            "numeric 0.9934 (a ratio)",
            Type::NUMERIC,
            numeric(-1, 0, 4, &[9934]),
        ),
        (
            "numeric 12345678901.25 (a sum of bigints)",
            Type::NUMERIC,
            numeric(2, 0, 2, &[123, 4567, 8901, 2500]),
        ),
        ("float8", Type::FLOAT8, 0.9934f64.to_be_bytes().to_vec()),
        ("int8", Type::INT8, 1_234_567_890i64.to_be_bytes().to_vec()),
    ];
    println!("| value | ns per decode |\n|---|---|");
    for (name, ty, raw) in &cases {
        // A warm-up round, then the measured one.
        per_value(ty, raw, n / 10);
        println!("| {name} | {:.0} |", per_value(ty, raw, n));
    }
}
