//! Canonical JSON: the exact bytes of
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)`
//! for the JSON subset Engram accepts (see docs/protocol.md):
//!
//! - objects with string keys, sorted by Unicode code point (UTF-8 byte order is the same);
//! - strings escaped like Python's `ensure_ascii` encoder: `\"`, `\\`, `\n`, `\r`, `\t`,
//!   `\b`, `\f`, every other char outside `0x20..=0x7e` as lowercase `\uXXXX`, astral chars
//!   as a surrogate pair;
//! - integers in `-2^63 ..= 2^64-1`, written in decimal;
//! - finite floats in Python `repr(float)` form: shortest round-trip digits, the nearest
//!   such string and at a tie the even last digit (`shortest`), fixed notation
//!   when the decimal exponent `decpt` (value = 0.DIGITS x 10^decpt) is in `-3..=16`,
//!   otherwise `d[.ddd]e[+-]XX` (at least two exponent digits); `.0` added to integral
//!   fixed values; `-0.0` kept;
//! - `true`, `false`, `null`, arrays; nesting at most [`MAX_DEPTH`] containers deep.

use crate::error::{err, ErrorKind, Result};
use std::io::Write;

/// Deepest nesting of objects/arrays accepted (the top-level object counts as 1).
pub const MAX_DEPTH: usize = 64;

/// The key that `canonical_json` adds (or overrides) with the model version.
pub const MODEL_VERSION_KEY: &str = "model_version";

/// A JSON value as Engram metadata may hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_u16_escape(out: &mut Vec<u8>, unit: u32) {
    out.extend_from_slice(b"\\u");
    for shift in [12u32, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize]);
    }
}

/// Write `s` as a JSON string literal, escaped like Python's `ensure_ascii=True`.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 {
            // Non-ASCII: handled per char below; flush the run first.
            if run_start < i {
                out.extend_from_slice(&bytes[run_start..i]);
            }
            run_start = i;
            break;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        escape_ascii(out, b);
        run_start = i + 1;
    }
    if run_start < bytes.len() {
        // Slow path from the first non-ASCII byte on (or nothing left to do).
        for c in s[run_start..].chars() {
            let cp = c as u32;
            if cp < 0x80 {
                let b = cp as u8;
                if (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
                    out.push(b);
                } else {
                    escape_ascii(out, b);
                }
            } else if cp <= 0xffff {
                push_u16_escape(out, cp);
            } else {
                let v = cp - 0x10000;
                push_u16_escape(out, 0xd800 | (v >> 10));
                push_u16_escape(out, 0xdc00 | (v & 0x3ff));
            }
        }
    }
    out.push(b'"');
}

fn escape_ascii(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => push_u16_escape(out, u32::from(b)),
    }
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let _ = write!(out, "{v}");
}

/// Write a finite float exactly as Python's `repr(float)` does.
pub fn write_f64(out: &mut Vec<u8>, v: f64) -> Result<()> {
    if !v.is_finite() {
        return err(
            ErrorKind::InvalidMetadata,
            "metadata floats must be finite (NaN and infinity are not JSON)",
        );
    }
    if v.is_sign_negative() {
        out.push(b'-');
    }
    if v == 0.0 {
        out.extend_from_slice(b"0.0");
        return Ok(());
    }
    // Not Rust's `{:e}`: at an exact tie between two shortest digit strings it rounds up,
    // where Python keeps the even digit (see `shortest`).
    let mut buf = [0u8; 20];
    let Some((n, decpt)) = crate::shortest::shortest(v, &mut buf) else {
        return err(
            ErrorKind::InvalidMetadata,
            format!("metadata float {v:e} could not be formatted"),
        );
    };
    for d in &mut buf[..n] {
        *d += b'0';
    }
    let digits = &buf[..n];
    let ndigits = n as i32;
    let exp = decpt - 1;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-decpt) as usize));
            out.extend_from_slice(digits);
        } else if decpt < ndigits {
            out.extend_from_slice(&digits[..decpt as usize]);
            out.push(b'.');
            out.extend_from_slice(&digits[decpt as usize..]);
        } else {
            out.extend_from_slice(digits);
            out.extend(std::iter::repeat_n(b'0', (decpt - ndigits) as usize));
            out.extend_from_slice(b".0");
        }
    } else {
        out.push(digits[0]);
        if ndigits > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    Ok(())
}

/// Float text on its own (for tests and docs).
pub fn float_repr(v: f64) -> Result<String> {
    let mut out = Vec::new();
    write_f64(&mut out, v)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn write_value(out: &mut Vec<u8>, v: &Json, depth: usize) -> Result<()> {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Int(i) => write_i64(out, *i),
        Json::UInt(u) => write_u64(out, *u),
        Json::Float(f) => write_f64(out, *f)?,
        Json::Str(s) => write_str(out, s),
        Json::Array(items) => {
            check_depth(depth + 1)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(b']');
        }
        Json::Object(items) => {
            check_depth(depth + 1)?;
            let refs: Vec<(&str, &Json)> = items.iter().map(|(k, v)| (k.as_str(), v)).collect();
            write_object(out, refs, depth + 1)?;
        }
    }
    Ok(())
}

fn write_object(out: &mut Vec<u8>, mut items: Vec<(&str, &Json)>, depth: usize) -> Result<()> {
    items.sort_by(|a, b| a.0.cmp(b.0));
    if items.windows(2).any(|w| w[0].0 == w[1].0) {
        return err(
            ErrorKind::InvalidMetadata,
            "metadata has two keys with the same text",
        );
    }
    out.push(b'{');
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, v, depth)?;
    }
    out.push(b'}');
    Ok(())
}

pub fn check_depth(depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return err(
            ErrorKind::InvalidMetadata,
            format!("metadata nests deeper than {MAX_DEPTH} levels"),
        );
    }
    Ok(())
}

/// Canonical bytes of `metadata` with `"model_version": model_version` set (when given).
pub fn canonical_json(metadata: &Json, model_version: Option<&str>) -> Result<Vec<u8>> {
    let Json::Object(items) = metadata else {
        return err(ErrorKind::InvalidMetadata, "metadata must be a JSON object");
    };
    let version = model_version.map(|v| Json::Str(v.to_owned()));
    let mut refs: Vec<(&str, &Json)> = items
        .iter()
        .filter(|(k, _)| version.is_none() || k != MODEL_VERSION_KEY)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    if let Some(v) = &version {
        refs.push((MODEL_VERSION_KEY, v));
    }
    let mut out = Vec::with_capacity(64);
    write_object(&mut out, refs, 1)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_python_repr() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (1234.5678, "1234.5678"),
            (1e22, "1e+22"),
        ];
        for (v, want) in cases {
            assert_eq!(float_repr(*v).unwrap(), *want, "{v:?}");
        }
        assert!(float_repr(f64::NAN).is_err());
        assert!(float_repr(f64::INFINITY).is_err());
    }

    #[test]
    fn strings_escape_like_python() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}\u{7f}é€😀");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\"b\\c\n\u0001\u007f\u00e9\u20ac\ud83d\ude00""#
        );
    }

    #[test]
    fn model_version_overrides() {
        let meta = Json::Object(vec![
            ("model_version".into(), Json::Str("old".into())),
            ("b".into(), Json::Int(1)),
        ]);
        let out = canonical_json(&meta, Some("new")).unwrap();
        assert_eq!(out, br#"{"b":1,"model_version":"new"}"#);
    }
}
