//! One result value of a catalog query or of a derived family, kept as what it is: a number
//! stays a number from the wire (or from pgpulse's own computation) to the series, and is
//! printed as PostgreSQL prints it (`t`/`f`, integers, shortest floats, exact `numeric`) only
//! where text is wanted: labels and published rows.
//!
//! Catalog queries run over the extended protocol (one statement per query, enforced by the
//! server), whose results arrive binary; this is the only place that knows their encodings.
//! `numeric` is decoded here, exactly, into its decimal text: no crate of the registry decodes
//! it over PostgreSQL's whole range (rust_decimal stops at 28 digits and refuses NaN and
//! ±Infinity), and the decimal text is what a correctly rounded conversion to `f64` needs.
//! It costs 240–430 ns per value against 17 ns for a `float8` (`cargo bench --bench decode`,
//! BENCHMARKS.md); the shipped catalog returns few `numeric` columns (the statistics and
//! times it reads are integers and floats), so that is well under a millisecond a minute.

use std::error::Error;

use tokio_postgres::types::{FromSql, Type};

type BoxError = Box<dyn Error + Sync + Send>;

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// `boolean`: 1 or 0 as a number, `t` or `f` as text.
    Bool(bool),
    /// Integers (`int2`, `int4`, `int8`, `oid`, `xid`, `pg_lsn`), exact.
    Int(i128),
    /// `float4`, `float8`, and timestamps as Unix seconds.
    Float(f64),
    /// `numeric`, as its exact decimal text (`NaN`, `Infinity` included).
    Numeric(String),
    /// Text of any text type.
    Text(String),
}

impl Cell {
    /// The value as PostgreSQL prints it, `None` for NULL (labels and published rows).
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Bool(b) => Some(if *b { "t" } else { "f" }.to_owned()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(v) => Some(float_text(*v)),
            Cell::Numeric(t) | Cell::Text(t) => Some(t.clone()),
        }
    }

    /// The value as a number, `Ok(None)` for NULL; `Err` holds text that is not a number.
    /// Text is parsed only where text truly arrived (a text column declared as a value).
    pub fn number(&self) -> Result<Option<f64>, &str> {
        match self {
            Cell::Null => Ok(None),
            Cell::Bool(b) => Ok(Some(if *b { 1.0 } else { 0.0 })),
            Cell::Int(i) => Ok(Some(*i as f64)),
            Cell::Float(v) => Ok(Some(*v)),
            Cell::Numeric(t) | Cell::Text(t) => parse_value(t).map(Some).ok_or(t.as_str()),
        }
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()).into())
}

fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// Decodes a binary `numeric` (sign, weight, scale and base-10000 digits) exactly.
fn numeric_text(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        let b = raw.get(i..i + 2).ok_or("numeric value is truncated")?;
        Ok(u16::from_be_bytes(be::<2>(b)?))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    match sign {
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => {}
    }
    let digits = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<u16>, _>>()?;
    let digit = |pos: i32| -> u16 {
        usize::try_from(pos)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };
    // Integer part: base-10000 groups 0..=weight.
    let mut int = String::new();
    for g in 0..=weight.max(0) {
        if g > weight {
            break;
        }
        let d = digit(g);
        if int.is_empty() {
            if d != 0 {
                int.push_str(&d.to_string());
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    // Fraction: groups after the weight, cut to the display scale.
    let mut frac = String::new();
    let mut g = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(g)));
        g += 1;
    }
    frac.truncate(dscale);
    let neg = if sign == 0x4000 { "-" } else { "" };
    Ok(if frac.is_empty() {
        format!("{neg}{int}")
    } else {
        format!("{neg}{int}.{frac}")
    })
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::BOOL => Cell::Bool(raw.first() == Some(&1)),
            Type::INT2 => Cell::Int(i16::from_be_bytes(be(raw)?).into()),
            Type::INT4 => Cell::Int(i32::from_be_bytes(be(raw)?).into()),
            Type::INT8 => Cell::Int(i64::from_be_bytes(be(raw)?).into()),
            Type::OID | Type::XID => Cell::Int(u32::from_be_bytes(be(raw)?).into()),
            Type::PG_LSN => Cell::Int(u64::from_be_bytes(be(raw)?).into()),
            Type::FLOAT4 => Cell::Float(f64::from(f32::from_be_bytes(be(raw)?))),
            Type::FLOAT8 => Cell::Float(f64::from_be_bytes(be(raw)?)),
            Type::NUMERIC => Cell::Numeric(numeric_text(raw)?),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let micros = i64::from_be_bytes(be(raw)?);
                Cell::Float(micros.saturating_add(PG_EPOCH_OFFSET_MICROS) as f64 / 1e6)
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::CHAR => {
                Cell::Text(String::from_utf8_lossy(raw).into_owned())
            }
            ref other => {
                return Err(format!(
                    "type {other} is not supported; cast the column to text or a number in the SQL"
                )
                .into());
            }
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Parses a value's text as a number: integers, floats, NaN/Infinity, booleans (t/f).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "t" | "true" => Some(1.0),
        "f" | "false" => Some(0.0),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn numerics_decode_exactly() {
        assert_eq!(numeric_text(&numeric(0, 0, 0, &[42])).unwrap(), "42");
        assert_eq!(
            numeric_text(&numeric(1, 0, 2, &[1, 2345, 6700])).unwrap(),
            "12345.67"
        );
        assert_eq!(
            numeric_text(&numeric(-1, 0x4000, 3, &[1250])).unwrap(),
            "-0.125"
        );
        assert_eq!(numeric_text(&numeric(2, 0, 0, &[3])).unwrap(), "300000000");
        assert_eq!(numeric_text(&numeric(0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_text(&numeric(0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn values_parse_as_postgres_prints_them() {
        assert_eq!(parse_value("t"), Some(1.0));
        assert_eq!(parse_value("12.5"), Some(12.5));
        assert_eq!(parse_value("x"), None);
        assert_eq!(float_text(0.25), "0.25");
        assert_eq!(float_text(3.0), "3");
    }

    #[test]
    fn cells_are_numbers_for_values_and_postgres_text_for_labels() {
        let big = Cell::Int(i128::from(i64::MIN));
        assert_eq!(big.text().as_deref(), Some("-9223372036854775808"), "exact");
        assert_eq!(Cell::Bool(true).number(), Ok(Some(1.0)));
        assert_eq!(Cell::Bool(false).text().as_deref(), Some("f"));
        assert_eq!(Cell::Null.number(), Ok(None));
        assert_eq!(Cell::Null.text(), None);
        assert_eq!(Cell::Float(-0.0).text().as_deref(), Some("-0"));
        assert_eq!(
            Cell::Float(f64::INFINITY).text().as_deref(),
            Some("Infinity")
        );
        assert!(Cell::Float(f64::NAN).number().unwrap().unwrap().is_nan());
        assert_eq!(Cell::Float(1e-300).number(), Ok(Some(1e-300)));
        let n = Cell::Numeric("12345.670".into());
        assert_eq!(n.number(), Ok(Some(12345.67)));
        assert_eq!(
            n.text().as_deref(),
            Some("12345.670"),
            "the scale PostgreSQL prints"
        );
        assert_eq!(
            Cell::Numeric("Infinity".into()).number(),
            Ok(Some(f64::INFINITY))
        );
        assert_eq!(Cell::Text("x".into()).number(), Err("x"));
        assert_eq!(Cell::Text("12".into()).number(), Ok(Some(12.0)));
    }
}
