//! Content identifiers and embedding hashes.
//!
//! `cid = "v1::" + hex(SHA-256(f32_le(embedding) || canonical_json))`,
//! `embedding_hash = hex(SHA-256(f32_le(embedding)))`,
//! `content_cid = "sha256:" + hex(SHA-256(bytes))`.
//!
//! Embeddings arrive as their little-endian float32 bytes (`f32_le`), so a numpy array is
//! hashed where it lies, without a copy.

use crate::error::{err, ErrorKind, Result};
use crate::par::par_map;
use sha2::{Digest, Sha256};

pub const CID_PREFIX: &str = "v1::";
pub const CONTENT_CID_PREFIX: &str = "sha256:";

/// Lowercase hex of a 32-byte digest.
pub fn hex32(digest: &[u8; 32]) -> String {
    hex::encode(digest)
}

/// Check that `f32_le` holds at least one float32 and that every one is finite.
pub fn check_embedding(f32_le: &[u8]) -> Result<()> {
    if f32_le.is_empty() {
        return err(ErrorKind::InvalidEmbedding, "embedding is empty");
    }
    if !f32_le.len().is_multiple_of(4) {
        return err(
            ErrorKind::InvalidEmbedding,
            format!("embedding has {} bytes, not a multiple of 4", f32_le.len()),
        );
    }
    // NaN and +-inf are exactly the floats whose exponent bits are all ones.
    let bad = f32_le.chunks_exact(4).position(|c| {
        let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        bits & 0x7f80_0000 == 0x7f80_0000
    });
    if let Some(i) = bad {
        return err(
            ErrorKind::InvalidEmbedding,
            format!("embedding value at index {i} is NaN or infinite"),
        );
    }
    Ok(())
}

/// `f32_le` of a slice of floats (for callers that hold `f32`s rather than bytes).
pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn embedding_hash_raw(f32_le: &[u8]) -> Result<[u8; 32]> {
    check_embedding(f32_le)?;
    Ok(Sha256::digest(f32_le).into())
}

pub fn embedding_hash(f32_le: &[u8]) -> Result<String> {
    Ok(hex32(&embedding_hash_raw(f32_le)?))
}

/// CID v1 from the embedding bytes and the canonical metadata JSON.
pub fn cid_from_parts(f32_le: &[u8], canonical_json: &[u8]) -> Result<String> {
    check_embedding(f32_le)?;
    let mut h = Sha256::new();
    h.update(f32_le);
    h.update(canonical_json);
    let digest: [u8; 32] = h.finalize().into();
    let mut s = String::with_capacity(CID_PREFIX.len() + 64);
    s.push_str(CID_PREFIX);
    s.push_str(&hex32(&digest));
    Ok(s)
}

pub fn content_cid(data: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(data).into();
    format!("{CONTENT_CID_PREFIX}{}", hex32(&digest))
}

/// Split a row-major matrix of `rows` rows into per-row byte slices.
pub fn rows_of(matrix: &[u8], rows: usize) -> Result<Vec<&[u8]>> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    if !matrix.len().is_multiple_of(rows) {
        return err(
            ErrorKind::InvalidEmbedding,
            "matrix bytes do not split into rows",
        );
    }
    let width = matrix.len() / rows;
    if width == 0 {
        return err(ErrorKind::InvalidEmbedding, "matrix rows are empty (dim 0)");
    }
    Ok(matrix.chunks_exact(width).collect())
}

/// Embedding hashes of every row, hashed in parallel. Fails on the first bad row.
pub fn embedding_hashes(rows: &[&[u8]]) -> Result<Vec<String>> {
    par_map(rows.len(), |i| {
        embedding_hash(rows[i])
            .map_err(|e| crate::error::CoreError::new(e.kind, format!("row {i}: {}", e.message)))
    })
    .into_iter()
    .collect()
}

/// CIDs of every row with its canonical metadata, hashed in parallel.
pub fn cids(rows: &[&[u8]], canonical: &[&[u8]]) -> Result<Vec<String>> {
    if rows.len() != canonical.len() {
        return err(
            ErrorKind::InvalidMetadata,
            format!(
                "{} metadata objects for {} embedding rows",
                canonical.len(),
                rows.len()
            ),
        );
    }
    par_map(rows.len(), |i| {
        cid_from_parts(rows[i], canonical[i])
            .map_err(|e| crate::error::CoreError::new(e.kind, format!("row {i}: {}", e.message)))
    })
    .into_iter()
    .collect()
}
