//! Merkle commitments over `(cid, embedding_hash)` leaves.
//!
//! - leaf  = SHA-256(0x00 || u32_be(len(cid)) || utf8(cid) || embedding_hash_32_bytes)
//! - node  = SHA-256(0x01 || left || right)
//! - a level with an odd number of nodes promotes its last node unchanged (no
//!   duplication, so no two leaf lists share a root by padding);
//! - the root of one leaf is its leaf hash; an empty list has no root (an error).
//!
//! A proof lists the sibling hashes from the leaf up, each with the side the sibling is on.

use crate::error::{err, CoreError, ErrorKind, Result};
use crate::proof::decode32;
use sha2::{Digest, Sha256};

pub const LEAF_PREFIX: u8 = 0x00;
pub const NODE_PREFIX: u8 = 0x01;

/// Where the sibling sits relative to the running hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "L",
            Side::Right => "R",
        }
    }

    pub fn parse(s: &str) -> Result<Side> {
        match s {
            "L" => Ok(Side::Left),
            "R" => Ok(Side::Right),
            other => err(
                ErrorKind::InvalidMerkleInput,
                format!("proof step side must be \"L\" or \"R\", got {other:?}"),
            ),
        }
    }
}

pub type Step = (Side, [u8; 32]);

pub fn leaf_hash(cid: &str, embedding_hash_hex: &str) -> Result<[u8; 32]> {
    let eh = decode32(embedding_hash_hex, ErrorKind::InvalidHex, "embedding hash")?;
    let len = u32::try_from(cid.len())
        .map_err(|_| CoreError::new(ErrorKind::InvalidMerkleInput, "cid longer than 4 GiB"))?;
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(len.to_be_bytes());
    h.update(cid.as_bytes());
    h.update(eh);
    Ok(h.finalize().into())
}

pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn leaf_hashes(leaves: &[(&str, &str)]) -> Result<Vec<[u8; 32]>> {
    if leaves.is_empty() {
        return err(
            ErrorKind::InvalidMerkleInput,
            "no leaves: an empty list has no root",
        );
    }
    leaves
        .iter()
        .enumerate()
        .map(|(i, (cid, eh))| {
            leaf_hash(cid, eh)
                .map_err(|e| CoreError::new(e.kind, format!("leaf {i}: {}", e.message)))
        })
        .collect()
}

fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [only] => *only,
            _ => [0u8; 32], // chunks(2) yields 1 or 2 items
        })
        .collect()
}

pub fn root(leaves: &[(&str, &str)]) -> Result<[u8; 32]> {
    let mut level = leaf_hashes(leaves)?;
    while level.len() > 1 {
        level = next_level(&level);
    }
    Ok(level[0])
}

pub fn proof(leaves: &[(&str, &str)], index: i64) -> Result<Vec<Step>> {
    let mut level = leaf_hashes(leaves)?;
    let Some(mut idx) = usize::try_from(index).ok().filter(|i| *i < level.len()) else {
        return err(
            ErrorKind::InvalidMerkleInput,
            format!("leaf index {index} out of range for {} leaves", level.len()),
        );
    };
    let mut steps = Vec::new();
    while level.len() > 1 {
        let sibling = idx ^ 1;
        if sibling < level.len() {
            let side = if sibling < idx {
                Side::Left
            } else {
                Side::Right
            };
            steps.push((side, level[sibling]));
        }
        level = next_level(&level);
        idx /= 2;
    }
    Ok(steps)
}

pub fn verify(root_hex: &str, cid: &str, embedding_hash_hex: &str, steps: &[Step]) -> Result<bool> {
    let want = decode32(root_hex, ErrorKind::InvalidHex, "merkle root")?;
    let mut acc = leaf_hash(cid, embedding_hash_hex)?;
    for (side, sib) in steps {
        acc = match side {
            Side::Left => node_hash(sib, &acc),
            Side::Right => node_hash(&acc, sib),
        };
    }
    Ok(acc == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_for_many_sizes() {
        let hashes: Vec<String> = (0..13u8).map(|i| hex::encode([i; 32])).collect();
        for n in 1..=13 {
            let cids: Vec<String> = (0..n).map(|i| format!("v1::{i}")).collect();
            let leaves: Vec<(&str, &str)> = (0..n)
                .map(|i| (cids[i].as_str(), hashes[i].as_str()))
                .collect();
            let r = hex::encode(root(&leaves).unwrap());
            for (i, (c, e)) in leaves.iter().enumerate() {
                let p = proof(&leaves, i as i64).unwrap();
                assert!(verify(&r, c, e, &p).unwrap());
                assert!(!verify(&r, c, &hashes[12], &p).unwrap() || n == 13 && i == 12);
            }
        }
        assert!(root(&[]).is_err());
    }
}
