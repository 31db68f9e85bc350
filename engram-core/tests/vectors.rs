//! The shared vectors in ../tests/vectors/*.json, checked against the Rust implementation
//! (pytest checks the same files against both Python backends).

use engram_core::canon::{self, Json};
use engram_core::{cid, merkle, proof};
use serde_json::Value;
use std::path::PathBuf;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("valid JSON")
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::Int(i)
            } else if let Some(u) = n.as_u64() {
                Json::UInt(u)
            } else {
                Json::Float(n.as_f64().expect("finite"))
            }
        }
        Value::String(s) => Json::Str(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(map) => {
            Json::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))
}

fn cases(v: &Value) -> &Vec<Value> {
    v["cases"].as_array().expect("cases")
}

#[test]
fn canonical_json_vectors() {
    let v = load("canonical.json");
    for case in cases(&v) {
        let meta = to_json(&case["metadata"]);
        let version = case["model_version"].as_str();
        let got = canon::canonical_json(&meta, version).expect("canonical");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            s(case, "canonical"),
            "{}",
            s(case, "name")
        );
    }
}

#[test]
fn float_text_vectors() {
    let v = load("canonical.json");
    for f in v["floats"].as_array().expect("floats") {
        let bits = u64::from_str_radix(s(f, "bits"), 16).expect("hex bits");
        let value = f64::from_bits(bits);
        assert_eq!(canon::float_repr(value).unwrap(), s(f, "text"), "{value:e}");
        // The JSON number itself must parse to the same float.
        assert_eq!(f["value"].as_f64().unwrap().to_bits(), bits);
    }
}

#[test]
fn cid_vectors() {
    let v = load("cid.json");
    for case in cases(&v) {
        let name = s(case, "name");
        let emb = hex::decode(s(case, "embedding_f32le_hex")).unwrap();
        let canonical =
            canon::canonical_json(&to_json(&case["metadata"]), Some(s(case, "model_version")))
                .unwrap();
        assert_eq!(canonical, s(case, "canonical").as_bytes(), "{name}");
        assert_eq!(
            cid::embedding_hash(&emb).unwrap(),
            s(case, "embedding_hash"),
            "{name}"
        );
        assert_eq!(
            cid::cid_from_parts(&emb, &canonical).unwrap(),
            s(case, "cid"),
            "{name}"
        );
    }
    for c in v["content"].as_array().unwrap() {
        let data = hex::decode(s(c, "data_hex")).unwrap();
        assert_eq!(cid::content_cid(&data), s(c, "content_cid"));
    }
}

#[test]
fn batch_cids_match_single() {
    let v = load("cid.json");
    let case = &cases(&v)[0];
    let emb = hex::decode(s(case, "embedding_f32le_hex")).unwrap();
    let canonical = s(case, "canonical").as_bytes();
    // Enough rows to take the parallel path.
    let n = 2000;
    let matrix: Vec<u8> = emb.iter().copied().cycle().take(emb.len() * n).collect();
    let rows = cid::rows_of(&matrix, n).unwrap();
    let parts = vec![canonical; n];
    let cids = cid::cids(&rows, &parts).unwrap();
    assert!(cids.iter().all(|c| c == s(case, "cid")));
    let hashes = cid::embedding_hashes(&rows).unwrap();
    assert!(hashes.iter().all(|h| h == s(case, "embedding_hash")));
}

#[test]
fn proof_vectors() {
    let v = load("proofs.json");
    for case in cases(&v) {
        let name = s(case, "name");
        let emb = hex::decode(s(case, "embedding_f32le_hex")).unwrap();
        let (nonce, hotkey, eh) = (
            s(case, "nonce_hex"),
            s(case, "validator_hotkey_hex"),
            s(case, "embedding_hash"),
        );
        let key = proof::v2_key(
            &proof::decode_hotkey(hotkey).unwrap(),
            &proof::decode_nonce(nonce).unwrap(),
        );
        assert_eq!(hex::encode(key), s(case, "v2_key_hex"), "{name}");
        assert_eq!(
            proof::proof_v1(nonce, eh).unwrap(),
            s(case, "proof_v1"),
            "{name}"
        );
        assert_eq!(
            proof::proof_v2(hotkey, nonce, &emb).unwrap(),
            s(case, "proof_v2"),
            "{name}"
        );
        assert!(proof::verify_v1(nonce, eh, s(case, "proof_v1"), 100, 99.5).unwrap());
        assert!(proof::verify_v2(hotkey, nonce, &emb, s(case, "proof_v2"), 100, 0.0).unwrap());
        // Upper-case hex decodes to the same bytes.
        assert!(proof::verify_v1(
            &nonce.to_uppercase(),
            &eh.to_uppercase(),
            &s(case, "proof_v1").to_uppercase(),
            100,
            0.0
        )
        .unwrap());
        assert!(!proof::verify_v2(hotkey, nonce, &emb, s(case, "proof_v1"), 100, 0.0).unwrap());
        assert!(proof::verify_v2(hotkey, nonce, &emb, s(case, "proof_v2"), 100, 100.0).is_err());
    }
}

#[test]
fn merkle_vectors() {
    let v = load("merkle.json");
    for case in cases(&v) {
        let name = s(case, "name");
        let owned: Vec<(String, String)> = case["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l[0].as_str().unwrap().to_owned(),
                    l[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let leaves: Vec<(&str, &str)> = owned
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        for ((c, e), want) in leaves.iter().zip(case["leaf_hashes"].as_array().unwrap()) {
            assert_eq!(
                hex::encode(merkle::leaf_hash(c, e).unwrap()),
                want.as_str().unwrap()
            );
        }
        let root = hex::encode(merkle::root(&leaves).unwrap());
        assert_eq!(root, s(case, "root"), "{name}");
        for (i, want) in case["proofs"].as_array().unwrap().iter().enumerate() {
            let steps = merkle::proof(&leaves, i as i64).unwrap();
            let got: Vec<Value> = steps
                .iter()
                .map(|(side, h)| serde_json::json!([side.as_str(), hex::encode(h)]))
                .collect();
            assert_eq!(&Value::Array(got), want, "{name} proof {i}");
            let (c, e) = leaves[i];
            assert!(merkle::verify(&root, c, e, &steps).unwrap());
            let other = leaves[(i + 1) % leaves.len()];
            if other != leaves[i] {
                assert!(!merkle::verify(&root, other.0, other.1, &steps).unwrap());
            }
        }
    }
}
