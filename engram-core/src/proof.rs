//! Storage challenges and proofs.
//!
//! - v1: `hex(HMAC-SHA256(key = nonce, msg = embedding_hash as 64 lowercase hex ASCII bytes))`
//! - v2: `hex(HMAC-SHA256(key = SHA-256(validator_hotkey_32 || nonce), msg = f32_le(embedding)))`
//!
//! Verification compares in constant time and rejects expired challenges.

use crate::cid::check_embedding;
use crate::error::{err, CoreError, ErrorKind, Result};
use crate::par::par_map;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 32;
pub const HOTKEY_LEN: usize = 32;

/// Decode exactly 32 bytes of hex (either case); `what` names the argument in errors.
pub fn decode32(s: &str, kind: ErrorKind, what: &str) -> Result<[u8; 32]> {
    if s.len() != 64 {
        return err(
            kind,
            format!(
                "{what} must be 64 hex characters (32 bytes), got {}",
                s.len()
            ),
        );
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| CoreError::new(kind, format!("{what} is not hex: {e}")))?;
    Ok(out)
}

pub fn decode_nonce(s: &str) -> Result<[u8; NONCE_LEN]> {
    decode32(s, ErrorKind::InvalidNonce, "nonce")
}

pub fn decode_hotkey(s: &str) -> Result<[u8; HOTKEY_LEN]> {
    decode32(s, ErrorKind::InvalidHotkey, "validator hotkey")
}

/// A fresh 32-byte nonce from the OS CSPRNG, as lowercase hex.
pub fn new_nonce() -> Result<String> {
    let mut buf = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut buf)
        .map_err(|e| CoreError::new(ErrorKind::Random, format!("OS random source failed: {e}")))?;
    Ok(hex::encode(buf))
}

fn hmac_raw(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA256 takes any key length; `new_from_slice` cannot fail. Use a fixed key
    // rather than panic should that ever change.
    <HmacSha256 as Mac>::new(&Default::default())
}

/// The v1 message: the embedding hash as 64 lowercase hex ASCII bytes.
fn v1_message(embedding_hash_hex: &str) -> Result<[u8; 64]> {
    let raw = decode32(embedding_hash_hex, ErrorKind::InvalidHex, "embedding hash")?;
    let mut msg = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the input length.
    let _ = hex::encode_to_slice(raw, &mut msg);
    Ok(msg)
}

fn proof_v1_raw(nonce: &[u8; NONCE_LEN], embedding_hash_hex: &str) -> Result<[u8; 32]> {
    Ok(hmac_raw(nonce, &v1_message(embedding_hash_hex)?))
}

pub fn proof_v1(nonce_hex: &str, embedding_hash_hex: &str) -> Result<String> {
    let nonce = decode_nonce(nonce_hex)?;
    Ok(hex::encode(proof_v1_raw(&nonce, embedding_hash_hex)?))
}

/// The v2 key: `SHA-256(validator_hotkey || nonce)`.
pub fn v2_key(hotkey: &[u8; HOTKEY_LEN], nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hotkey);
    h.update(nonce);
    h.finalize().into()
}

fn proof_v2_raw(hotkey: &[u8; 32], nonce: &[u8; 32], f32_le: &[u8]) -> Result<[u8; 32]> {
    check_embedding(f32_le)?;
    Ok(hmac_raw(&v2_key(hotkey, nonce), f32_le))
}

pub fn proof_v2(hotkey_hex: &str, nonce_hex: &str, f32_le: &[u8]) -> Result<String> {
    let hotkey = decode_hotkey(hotkey_hex)?;
    let nonce = decode_nonce(nonce_hex)?;
    Ok(hex::encode(proof_v2_raw(&hotkey, &nonce, f32_le)?))
}

/// v1 proofs for many (nonce, embedding hash) pairs.
pub fn proofs_v1(nonces_hex: &[&str], hashes_hex: &[&str]) -> Result<Vec<String>> {
    if nonces_hex.len() != hashes_hex.len() {
        return err(
            ErrorKind::InvalidArgument,
            format!(
                "{} nonces for {} embedding hashes",
                nonces_hex.len(),
                hashes_hex.len()
            ),
        );
    }
    let nonces = nonces_hex
        .iter()
        .map(|n| decode_nonce(n))
        .collect::<Result<Vec<_>>>()?;
    par_map(nonces.len(), |i| {
        proof_v1_raw(&nonces[i], hashes_hex[i]).map(hex::encode)
    })
    .into_iter()
    .collect()
}

/// v2 proofs for one validator: one nonce per embedding row.
pub fn proofs_v2(hotkey_hex: &str, nonces_hex: &[&str], rows: &[&[u8]]) -> Result<Vec<String>> {
    let hotkey = decode_hotkey(hotkey_hex)?;
    if nonces_hex.len() != rows.len() {
        return err(
            ErrorKind::InvalidArgument,
            format!(
                "{} nonces for {} embedding rows",
                nonces_hex.len(),
                rows.len()
            ),
        );
    }
    let nonces = nonces_hex
        .iter()
        .map(|n| decode_nonce(n))
        .collect::<Result<Vec<_>>>()?;
    par_map(rows.len(), |i| {
        proof_v2_raw(&hotkey, &nonces[i], rows[i])
            .map(hex::encode)
            .map_err(|e| CoreError::new(e.kind, format!("row {i}: {}", e.message)))
    })
    .into_iter()
    .collect()
}

/// Fail with `ChallengeExpired` when `now >= expires_at` (both unix seconds).
pub fn check_expiry(expires_at: i64, now: f64) -> Result<()> {
    if now.is_nan() || now >= expires_at as f64 {
        return err(
            ErrorKind::ChallengeExpired,
            format!("challenge expired at {expires_at} (now {now})"),
        );
    }
    Ok(())
}

/// Constant-time comparison of a computed proof with the hex the miner sent. A proof that
/// is not 64 hex characters is simply wrong (false), not an error: it is the remote
/// party's answer, not the caller's mistake.
fn matches(expected: &[u8; 32], proof_hex: &str) -> bool {
    let mut got = [0u8; 32];
    if proof_hex.len() != 64 || hex::decode_to_slice(proof_hex, &mut got).is_err() {
        return false;
    }
    expected.ct_eq(&got).into()
}

pub fn verify_v1(
    nonce_hex: &str,
    embedding_hash_hex: &str,
    proof_hex: &str,
    expires_at: i64,
    now: f64,
) -> Result<bool> {
    let nonce = decode_nonce(nonce_hex)?;
    let expected = proof_v1_raw(&nonce, embedding_hash_hex)?;
    check_expiry(expires_at, now)?;
    Ok(matches(&expected, proof_hex))
}

pub fn verify_v2(
    hotkey_hex: &str,
    nonce_hex: &str,
    f32_le: &[u8],
    proof_hex: &str,
    expires_at: i64,
    now: f64,
) -> Result<bool> {
    let hotkey = decode_hotkey(hotkey_hex)?;
    let nonce = decode_nonce(nonce_hex)?;
    let expected = proof_v2_raw(&hotkey, &nonce, f32_le)?;
    check_expiry(expires_at, now)?;
    Ok(matches(&expected, proof_hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
        hex::encode(hmac_raw(key, msg))
    }

    #[test]
    fn hmac_hex_is_rfc4231_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nonce_is_random_hex() {
        let a = new_nonce().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_nonce().unwrap());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let n = "00".repeat(32);
        assert_eq!(
            proof_v1("abc", &n).unwrap_err().kind,
            ErrorKind::InvalidNonce
        );
        assert_eq!(
            proof_v1(&"zz".repeat(32), &n).unwrap_err().kind,
            ErrorKind::InvalidNonce
        );
        assert_eq!(proof_v1(&n, "xyz").unwrap_err().kind, ErrorKind::InvalidHex);
        let p = proof_v1(&n, &n).unwrap();
        assert!(verify_v1(&n, &n, &p, 10, 5.0).unwrap());
        assert!(!verify_v1(&n, &n, "nothex", 10, 5.0).unwrap());
        assert_eq!(
            verify_v1(&n, &n, &p, 10, 10.0).unwrap_err().kind,
            ErrorKind::ChallengeExpired
        );
    }
}
