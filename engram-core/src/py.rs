//! The PyO3 surface. Conversions from Python objects live here; the byte rules live in the
//! other modules. Every error becomes an exception from `engram.core.errors` (or a builtin
//! `ValueError`/`TypeError` when that package is not importable); nothing panics.

use crate::buffer::RawBuffer;
use crate::canon::{self, MAX_DEPTH, MODEL_VERSION_KEY};
use crate::cid;
use crate::error::{CoreError, ErrorKind};
use crate::merkle::{self, Side, Step};
use crate::proof;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use std::sync::{mpsc, Mutex};

use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

type CoreResult<T> = std::result::Result<T, CoreError>;

static ERRORS: GILOnceCell<Option<Py<PyModule>>> = GILOnceCell::new();

fn to_pyerr(py: Python<'_>, e: CoreError) -> PyErr {
    let module = ERRORS.get_or_init(py, || {
        py.import("engram.core.errors").ok().map(Bound::unbind)
    });
    if let Some(m) = module {
        if let Ok(cls) = m.bind(py).getattr(e.kind.class_name()) {
            if let Ok(ty) = cls.downcast_into::<PyType>() {
                return PyErr::from_type(ty, e.message);
            }
        }
    }
    if e.kind.is_type_error() {
        PyTypeError::new_err(e.message)
    } else {
        PyValueError::new_err(e.message)
    }
}

trait IntoPy<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for CoreResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}

/// Longest type name an error message repeats (the fallback caps the same way).
const MAX_TYPE_NAME: usize = 80;

/// `type(obj).__name__`, capped at [`MAX_TYPE_NAME`] characters (a class can be given any
/// name; a message never repeats a huge one).
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    if name.chars().count() <= MAX_TYPE_NAME {
        return name;
    }
    let mut capped: String = name.chars().take(MAX_TYPE_NAME - 1).collect();
    capped.push('…');
    capped
}

/// A Python `str` as `&str`; anything else (or a str with lone surrogates) is `kind`.
fn as_str<'a>(obj: &'a Bound<'_, PyAny>, kind: ErrorKind, what: &str) -> CoreResult<&'a str> {
    let s = obj.downcast::<PyString>().map_err(|_| {
        CoreError::new(
            kind,
            format!("{what} must be a str, got {}", type_name(obj)),
        )
    })?;
    s.to_str().map_err(|_| {
        CoreError::new(
            kind,
            format!("{what} is not valid Unicode (lone surrogate)"),
        )
    })
}

fn hex_arg<'a>(obj: &'a Bound<'_, PyAny>, kind: ErrorKind, what: &str) -> CoreResult<&'a str> {
    as_str(obj, kind, what)
}

// ---------------------------------------------------------------------------------------
// Embeddings

/// An embedding's `f32_le` bytes: borrowed from a buffer, or built from a list of floats.
enum Vector {
    Buffer(RawBuffer),
    Owned(Vec<u8>),
}

impl Vector {
    fn bytes(&self) -> &[u8] {
        match self {
            Vector::Buffer(b) => b.bytes(),
            Vector::Owned(v) => v,
        }
    }
}

fn dtype_error(obj: &Bound<'_, PyAny>, what: &str) -> CoreError {
    let dtype = obj
        .getattr("dtype")
        .ok()
        .and_then(|d| d.str().ok())
        .map(|d| format!(" with dtype {d}"))
        .unwrap_or_default();
    CoreError::new(
        ErrorKind::InvalidEmbeddingDtype,
        format!(
            "{what} must be a C-contiguous float32 array (native byte order), got {}{dtype}",
            type_name(obj)
        ),
    )
}

fn float32_buffer(obj: &Bound<'_, PyAny>, ndim: usize, what: &str) -> CoreResult<RawBuffer> {
    let buf = RawBuffer::get(obj).ok_or_else(|| dtype_error(obj, what))?;
    // Memory is hashed as little-endian float32, so only native (= little-endian, see
    // lib.rs) 4-byte float formats pass.
    if !matches!(buf.format(), b"f" | b"@f" | b"=f" | b"<f") || buf.itemsize() != 4 {
        return Err(dtype_error(obj, what));
    }
    if buf.ndim() != ndim {
        return Err(CoreError::new(
            ErrorKind::InvalidEmbedding,
            format!("{what} must be {ndim}-D, got shape {:?}", buf.shape()),
        ));
    }
    if !buf.is_c_contiguous() {
        return Err(CoreError::new(
            ErrorKind::InvalidEmbedding,
            format!("{what} is not C-contiguous; pass np.ascontiguousarray(x)"),
        ));
    }
    Ok(buf)
}

fn vector(obj: &Bound<'_, PyAny>) -> CoreResult<Vector> {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let n = obj.len().unwrap_or(0);
        let mut out = Vec::with_capacity(n * 4);
        for (i, item) in obj
            .try_iter()
            .map_err(|_| dtype_error(obj, "embedding"))?
            .enumerate()
        {
            let item = item.map_err(|_| dtype_error(obj, "embedding"))?;
            let v: f64 = item.extract().map_err(|e| {
                if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) {
                    CoreError::new(
                        ErrorKind::InvalidEmbedding,
                        format!("embedding value at index {i} is out of float range"),
                    )
                } else {
                    CoreError::new(
                        ErrorKind::InvalidEmbeddingDtype,
                        format!(
                            "embedding list item {i} is {}, not a number",
                            type_name(&item)
                        ),
                    )
                }
            })?;
            let f = v as f32;
            if f.is_infinite() && v.is_finite() {
                // Too large for float32 (what `struct.pack("<f", v)` calls an overflow).
                return Err(CoreError::new(
                    ErrorKind::InvalidEmbedding,
                    format!("embedding value at index {i} is out of float32 range"),
                ));
            }
            out.extend_from_slice(&f.to_le_bytes());
        }
        return Ok(Vector::Owned(out));
    }
    Ok(Vector::Buffer(float32_buffer(obj, 1, "embedding")?))
}

/// A 2-D float32 matrix: its buffer and row count.
fn matrix(obj: &Bound<'_, PyAny>) -> CoreResult<(RawBuffer, usize)> {
    let buf = float32_buffer(obj, 2, "matrix")?;
    let shape = buf.shape();
    let (rows, dim) = (
        shape.first().copied().unwrap_or(0),
        shape.get(1).copied().unwrap_or(0),
    );
    if dim == 0 {
        return Err(CoreError::new(
            ErrorKind::InvalidEmbedding,
            "matrix rows are empty (dim 0)",
        ));
    }
    Ok((buf, rows))
}

// ---------------------------------------------------------------------------------------
// Canonical JSON from Python objects

fn meta_err(msg: String) -> CoreError {
    CoreError::new(ErrorKind::InvalidMetadata, msg)
}

// The refusal messages (identical in the Python fallback, which checks in the same order):
// sentences a client can act on; they repeat no part of the input but a capped type name.
const MSG_STRING: &str = "metadata string is not valid Unicode (it holds a lone surrogate)";
const MSG_KEY: &str = "metadata key is not valid Unicode (it holds a lone surrogate)";
const MSG_INT: &str = "metadata integers must lie in -2**63 .. 2**64-1 (64 bits)";
const MSG_FLOAT: &str = "metadata floats must be finite (NaN and infinity are not JSON)";
const MSG_DUPLICATE: &str = "metadata has two keys with the same text";

fn write_py(out: &mut Vec<u8>, obj: &Bound<'_, PyAny>, depth: usize) -> CoreResult<()> {
    // Subclasses of str/int/float/dict/list/tuple are read as their builtin value (their
    // storage, never their overridable methods), exactly as the fallback reads them.
    if let Ok(s) = obj.downcast::<PyString>() {
        let s = s.to_str().map_err(|_| meta_err(MSG_STRING.into()))?;
        canon::write_str(out, s);
    } else if let Ok(b) = obj.downcast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
    } else if obj.is_instance_of::<PyInt>() {
        if let Ok(v) = obj.extract::<i64>() {
            canon::write_i64(out, v);
        } else if let Ok(v) = obj.extract::<u64>() {
            canon::write_u64(out, v);
        } else {
            return Err(meta_err(MSG_INT.into()));
        }
    } else if let Ok(f) = obj.downcast::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Err(meta_err(MSG_FLOAT.into()));
        }
        canon::write_f64(out, v)?;
    } else if obj.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(d) = obj.downcast::<PyDict>() {
        canon::check_depth(depth + 1)?;
        write_dict(out, d, depth + 1, None)?;
    } else if let Ok(list) = obj.downcast::<PyList>() {
        canon::check_depth(depth + 1)?;
        // Index by index: a list changed meanwhile (by another thread) ends early, never
        // reads out of bounds.
        out.push(b'[');
        let mut i = 0;
        while let Ok(item) = list.get_item(i) {
            if i > 0 {
                out.push(b',');
            }
            write_py(out, &item, depth + 1)?;
            i += 1;
        }
        out.push(b']');
    } else if let Ok(tuple) = obj.downcast::<PyTuple>() {
        canon::check_depth(depth + 1)?;
        out.push(b'[');
        for (i, item) in tuple.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_py(out, &item, depth + 1)?;
        }
        out.push(b']');
    } else {
        return Err(meta_err(format!(
            "metadata value of type {} is not JSON (allowed: dict, list, tuple, str, int, float, bool, None)",
            type_name(obj)
        )));
    }
    Ok(())
}

/// Write a dict with sorted keys; `model_version` (when given) replaces that key. Keys are
/// checked in the dict's order, then values in key order (as the fallback does).
fn write_dict(
    out: &mut Vec<u8>,
    d: &Bound<'_, PyDict>,
    depth: usize,
    model_version: Option<&str>,
) -> CoreResult<()> {
    let mut keys: Vec<Bound<'_, PyAny>> = Vec::with_capacity(d.len() + 1);
    let mut vals: Vec<Bound<'_, PyAny>> = Vec::with_capacity(d.len() + 1);
    for (k, v) in d.iter() {
        keys.push(k);
        vals.push(v);
    }
    let mut order: Vec<(&str, Option<usize>)> = Vec::with_capacity(keys.len() + 1);
    for (i, k) in keys.iter().enumerate() {
        let s = k
            .downcast::<PyString>()
            .map_err(|_| meta_err(format!("metadata keys must be str, got {}", type_name(k))))?;
        let s = s.to_str().map_err(|_| meta_err(MSG_KEY.into()))?;
        if model_version.is_some() && s == MODEL_VERSION_KEY {
            continue;
        }
        order.push((s, Some(i)));
    }
    if model_version.is_some() {
        order.push((MODEL_VERSION_KEY, None));
    }
    order.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // Only str subclasses that hash or compare unlike their text can do this; the JSON
    // would hold the key twice, so it is refused.
    if order.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(meta_err(MSG_DUPLICATE.into()));
    }
    out.push(b'{');
    for (n, (k, idx)) in order.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        canon::write_str(out, k);
        out.push(b':');
        match (idx, model_version) {
            (Some(i), _) => write_py(out, &vals[*i], depth)?,
            (None, Some(v)) => canon::write_str(out, v),
            (None, None) => {}
        }
    }
    out.push(b'}');
    Ok(())
}

fn canonical_into(
    out: &mut Vec<u8>,
    metadata: &Bound<'_, PyAny>,
    model_version: Option<&str>,
) -> CoreResult<()> {
    let d = metadata.downcast::<PyDict>().map_err(|_| {
        meta_err(format!(
            "metadata must be a dict (a JSON object), got {}",
            type_name(metadata)
        ))
    })?;
    write_dict(out, d, 1, model_version)
}

fn model_version_arg<'a>(obj: &'a Bound<'_, PyAny>) -> CoreResult<&'a str> {
    as_str(obj, ErrorKind::InvalidArgument, "model_version")
}

// ---------------------------------------------------------------------------------------
// Functions

/// Canonical JSON bytes of `metadata` (with `model_version` set when given).
#[pyfunction]
#[pyo3(signature = (metadata, model_version=None))]
fn canonical_json<'py>(
    py: Python<'py>,
    metadata: &Bound<'py, PyAny>,
    model_version: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let version = model_version
        .filter(|v| !v.is_none())
        .map(model_version_arg)
        .transpose()
        .py_err(py)?;
    let mut out = Vec::with_capacity(128);
    canonical_into(&mut out, metadata, version).py_err(py)?;
    Ok(PyBytes::new(py, &out))
}

/// Python `repr(float)` text as canonical JSON writes it.
#[pyfunction]
fn float_repr(py: Python<'_>, value: f64) -> PyResult<String> {
    canon::float_repr(value).py_err(py)
}

/// `float_repr` of every value of a 1-D float64 array (native byte order), in order.
#[pyfunction]
fn float_reprs<'py>(py: Python<'py>, values: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let bad = || {
        CoreError::new(
            ErrorKind::InvalidArgument,
            format!(
                "values must be a 1-D C-contiguous float64 array (native byte order), got {}",
                type_name(values)
            ),
        )
    };
    let buf = RawBuffer::get(values).ok_or_else(bad).py_err(py)?;
    if !matches!(buf.format(), b"d" | b"@d" | b"=d" | b"<d")
        || buf.itemsize() != 8
        || buf.ndim() != 1
        || !buf.is_c_contiguous()
    {
        return Err(to_pyerr(py, bad()));
    }
    let bytes = buf.bytes();
    let n = bytes.len() / 8;
    // Without the GIL, in parallel: each chunk of values written into one text buffer (with
    // the end of each value's text); then one str per value, made straight from the buffer.
    const CHUNK: usize = 4096;
    let chunks: Vec<(Vec<u8>, Vec<usize>)> = py
        .allow_threads(|| {
            crate::par::par_map(n.div_ceil(CHUNK), |c| {
                let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
                let mut text = Vec::with_capacity((end - start) * 24);
                let mut ends = Vec::with_capacity(end - start);
                for (i, raw) in bytes[start * 8..end * 8].chunks_exact(8).enumerate() {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(raw);
                    canon::write_f64(&mut text, f64::from_le_bytes(b)).map_err(|e| {
                        CoreError::new(e.kind, format!("value {}: {}", start + i, e.message))
                    })?;
                    ends.push(text.len());
                }
                Ok((text, ends))
            })
            .into_iter()
            .collect::<CoreResult<Vec<_>>>()
        })
        .py_err(py)?;
    let list = PyList::empty(py);
    for (text, ends) in &chunks {
        let mut start = 0;
        for &end in ends {
            let s = std::str::from_utf8(&text[start..end]).unwrap_or("");
            list.append(PyString::new(py, s))?;
            start = end;
        }
    }
    Ok(list)
}

#[pyfunction]
fn embedding_hash(py: Python<'_>, vec: &Bound<'_, PyAny>) -> PyResult<String> {
    let v = vector(vec).py_err(py)?;
    cid::embedding_hash(v.bytes()).py_err(py)
}

#[pyfunction]
fn embedding_hashes(py: Python<'_>, matrix: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let (buf, rows) = self::matrix(matrix).py_err(py)?;
    let bytes = buf.bytes();
    py.allow_threads(|| {
        let rows = cid::rows_of(bytes, rows)?;
        cid::embedding_hashes(&rows)
    })
    .py_err(py)
}

#[pyfunction]
fn compute_cid(
    py: Python<'_>,
    vec: &Bound<'_, PyAny>,
    metadata: &Bound<'_, PyAny>,
    model_version: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let v = vector(vec).py_err(py)?;
    let version = model_version_arg(model_version).py_err(py)?;
    let mut canon = Vec::with_capacity(128);
    canonical_into(&mut canon, metadata, Some(version)).py_err(py)?;
    cid::cid_from_parts(v.bytes(), &canon).py_err(py)
}

#[pyfunction]
fn compute_cids(
    py: Python<'_>,
    matrix: &Bound<'_, PyAny>,
    metadatas: &Bound<'_, PyAny>,
    model_version: &Bound<'_, PyAny>,
) -> PyResult<Vec<String>> {
    let (buf, rows) = self::matrix(matrix).py_err(py)?;
    let version = model_version_arg(model_version).py_err(py)?;
    let metas = metadatas
        .downcast::<PyList>()
        .map_err(|_| {
            meta_err(format!(
                "metadatas must be a list of dicts, got {}",
                type_name(metadatas)
            ))
        })
        .py_err(py)?;
    if metas.len() != rows {
        return Err(to_pyerr(
            py,
            meta_err(format!(
                "{} metadata objects for {} embedding rows",
                metas.len(),
                rows
            )),
        ));
    }
    let bytes = buf.bytes();
    let rows_v = cid::rows_of(bytes, rows).py_err(py)?;
    let canon_row = |i: usize, m: &Bound<'_, PyAny>, out: &mut Vec<u8>| {
        canonical_into(out, m, Some(version))
            .map_err(|e| CoreError::new(e.kind, format!("row {i}: {}", e.message)))
    };
    if rows < 2 * CHUNK_ROWS || crate::par::threads() < 2 {
        // Small batch: canonical JSON (needs the GIL), then hash without the GIL.
        let mut canon = Vec::with_capacity(rows * 96);
        let mut ends = Vec::with_capacity(rows);
        for (i, m) in metas.iter().enumerate() {
            canon_row(i, &m, &mut canon).py_err(py)?;
            ends.push(canon.len());
        }
        let parts = split_ends(&canon, &ends, 0);
        return py.allow_threads(|| cid::cids(&rows_v, &parts)).py_err(py);
    }
    // Big batch: a pipeline. This thread (holding the GIL) writes the canonical JSON of one
    // chunk of rows after another; worker threads (no GIL needed) hash the chunks as they
    // arrive, so JSON writing and hashing overlap.
    let workers = crate::par::threads();
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Mutex::new(rx);
    let rows_ref = &rows_v;
    let outcome = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = &rx;
                scope.spawn(move || {
                    let mut done: Vec<(usize, CoreResult<Vec<String>>)> = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        let parts = split_ends(&job.canon, &job.ends, 0);
                        let end = job.start + parts.len();
                        let res = cid::cids(&rows_ref[job.start..end], &parts).map_err(|e| {
                            // Row numbers in messages are relative to the chunk; fix them.
                            reindex(e, job.start)
                        });
                        done.push((job.start, res));
                    }
                    done
                })
            })
            .collect();
        let mut meta_error = None;
        let mut iter = metas.iter().enumerate();
        'chunks: for start in (0..rows).step_by(CHUNK_ROWS) {
            let end = (start + CHUNK_ROWS).min(rows);
            let mut canon = Vec::with_capacity((end - start) * 96);
            let mut ends = Vec::with_capacity(end - start);
            for _ in start..end {
                let Some((i, m)) = iter.next() else { break };
                if let Err(e) = canon_row(i, &m, &mut canon) {
                    meta_error = Some(e);
                    break 'chunks;
                }
                ends.push(canon.len());
            }
            if tx.send(Job { start, canon, ends }).is_err() {
                break;
            }
        }
        drop(tx);
        let mut done: Vec<(usize, CoreResult<Vec<String>>)> = py.allow_threads(|| {
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if let Some(e) = meta_error {
            return Err(e);
        }
        done.sort_by_key(|(start, _)| *start);
        let mut out = Vec::with_capacity(rows);
        for (_, res) in done {
            out.extend(res?);
        }
        if out.len() != rows {
            return Err(CoreError::new(
                ErrorKind::InvalidEmbedding,
                "internal error: a hashing worker stopped early",
            ));
        }
        Ok(out)
    });
    outcome.py_err(py)
}

/// Rows per pipeline chunk in `compute_cids`.
const CHUNK_ROWS: usize = 2048;

struct Job {
    start: usize,
    canon: Vec<u8>,
    ends: Vec<usize>,
}

fn split_ends<'a>(canon: &'a [u8], ends: &[usize], mut start: usize) -> Vec<&'a [u8]> {
    ends.iter()
        .map(|&end| {
            let s = &canon[start..end];
            start = end;
            s
        })
        .collect()
}

/// `cid::cids` numbers rows from 0 within a chunk; make the message use absolute rows.
fn reindex(e: CoreError, offset: usize) -> CoreError {
    let msg = match e
        .message
        .strip_prefix("row ")
        .and_then(|r| r.split_once(':'))
    {
        Some((n, rest)) => match n.parse::<usize>() {
            Ok(n) => format!("row {}:{rest}", n + offset),
            Err(_) => e.message.clone(),
        },
        None => e.message.clone(),
    };
    CoreError::new(e.kind, msg)
}

#[pyfunction]
fn content_cid(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = data.downcast::<PyBytes>() {
        return Ok(cid::content_cid(b.as_bytes()));
    }
    if let Ok(b) = data.downcast::<pyo3::types::PyByteArray>() {
        return Ok(cid::content_cid(&b.to_vec()));
    }
    Err(to_pyerr(
        py,
        CoreError::new(
            ErrorKind::InvalidArgument,
            format!(
                "content must be bytes or bytearray, got {}",
                type_name(data)
            ),
        ),
    ))
}

#[pyfunction]
fn new_nonce(py: Python<'_>) -> PyResult<String> {
    proof::new_nonce().py_err(py)
}

#[pyfunction]
fn proof_v1(
    py: Python<'_>,
    nonce_hex: &Bound<'_, PyAny>,
    embedding_hash_hex: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let n = hex_arg(nonce_hex, ErrorKind::InvalidNonce, "nonce").py_err(py)?;
    let e = hex_arg(embedding_hash_hex, ErrorKind::InvalidHex, "embedding hash").py_err(py)?;
    proof::proof_v1(n, e).py_err(py)
}

fn str_list<'a>(
    items: &'a [Bound<'_, PyAny>],
    kind: ErrorKind,
    what: &str,
) -> CoreResult<Vec<&'a str>> {
    items.iter().map(|o| hex_arg(o, kind, what)).collect()
}

fn list_items<'py>(obj: &Bound<'py, PyAny>, what: &str) -> CoreResult<Vec<Bound<'py, PyAny>>> {
    let list = obj.downcast::<PyList>().map_err(|_| {
        CoreError::new(
            ErrorKind::InvalidArgument,
            format!("{what} must be a list, got {}", type_name(obj)),
        )
    })?;
    Ok(list.iter().collect())
}

#[pyfunction]
fn proofs_v1(
    py: Python<'_>,
    nonces_hex: &Bound<'_, PyAny>,
    embedding_hashes_hex: &Bound<'_, PyAny>,
) -> PyResult<Vec<String>> {
    let nonces = list_items(nonces_hex, "nonces").py_err(py)?;
    let hashes = list_items(embedding_hashes_hex, "embedding hashes").py_err(py)?;
    let n = str_list(&nonces, ErrorKind::InvalidNonce, "nonce").py_err(py)?;
    let h = str_list(&hashes, ErrorKind::InvalidHex, "embedding hash").py_err(py)?;
    py.allow_threads(|| proof::proofs_v1(&n, &h)).py_err(py)
}

#[pyfunction]
fn proof_v2(
    py: Python<'_>,
    validator_hotkey_hex: &Bound<'_, PyAny>,
    nonce_hex: &Bound<'_, PyAny>,
    vec: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let hk = hex_arg(
        validator_hotkey_hex,
        ErrorKind::InvalidHotkey,
        "validator hotkey",
    )
    .and_then(|h| proof::decode_hotkey(h).map(|_| h))
    .py_err(py)?;
    let n = hex_arg(nonce_hex, ErrorKind::InvalidNonce, "nonce")
        .and_then(|n| proof::decode_nonce(n).map(|_| n))
        .py_err(py)?;
    let v = vector(vec).py_err(py)?;
    proof::proof_v2(hk, n, v.bytes()).py_err(py)
}

#[pyfunction]
fn proofs_v2(
    py: Python<'_>,
    validator_hotkey_hex: &Bound<'_, PyAny>,
    nonces_hex: &Bound<'_, PyAny>,
    matrix: &Bound<'_, PyAny>,
) -> PyResult<Vec<String>> {
    let hk = hex_arg(
        validator_hotkey_hex,
        ErrorKind::InvalidHotkey,
        "validator hotkey",
    )
    .and_then(|h| proof::decode_hotkey(h).map(|_| h))
    .py_err(py)?;
    let nonces = list_items(nonces_hex, "nonces").py_err(py)?;
    let n = str_list(&nonces, ErrorKind::InvalidNonce, "nonce").py_err(py)?;
    let (buf, rows) = self::matrix(matrix).py_err(py)?;
    let bytes = buf.bytes();
    py.allow_threads(|| {
        let rows = cid::rows_of(bytes, rows)?;
        proof::proofs_v2(hk, &n, &rows)
    })
    .py_err(py)
}

#[pyfunction]
fn verify_proof_v1(
    py: Python<'_>,
    nonce_hex: &Bound<'_, PyAny>,
    embedding_hash_hex: &Bound<'_, PyAny>,
    proof_hex: &Bound<'_, PyAny>,
    expires_at: i64,
    now: f64,
) -> PyResult<bool> {
    let n = hex_arg(nonce_hex, ErrorKind::InvalidNonce, "nonce").py_err(py)?;
    let e = hex_arg(embedding_hash_hex, ErrorKind::InvalidHex, "embedding hash").py_err(py)?;
    let p = proof_hex
        .downcast::<PyString>()
        .ok()
        .and_then(|s| s.to_str().ok());
    let ok = proof::verify_v1(n, e, p.unwrap_or(""), expires_at, now).py_err(py)?;
    Ok(ok && p.is_some())
}

#[pyfunction]
fn verify_proof_v2(
    py: Python<'_>,
    validator_hotkey_hex: &Bound<'_, PyAny>,
    nonce_hex: &Bound<'_, PyAny>,
    vec: &Bound<'_, PyAny>,
    proof_hex: &Bound<'_, PyAny>,
    expires_at: i64,
    now: f64,
) -> PyResult<bool> {
    let hk = hex_arg(
        validator_hotkey_hex,
        ErrorKind::InvalidHotkey,
        "validator hotkey",
    )
    .and_then(|h| proof::decode_hotkey(h).map(|_| h))
    .py_err(py)?;
    let n = hex_arg(nonce_hex, ErrorKind::InvalidNonce, "nonce")
        .and_then(|n| proof::decode_nonce(n).map(|_| n))
        .py_err(py)?;
    let v = vector(vec).py_err(py)?;
    let p = proof_hex
        .downcast::<PyString>()
        .ok()
        .and_then(|s| s.to_str().ok());
    let ok = proof::verify_v2(hk, n, v.bytes(), p.unwrap_or(""), expires_at, now).py_err(py)?;
    Ok(ok && p.is_some())
}

/// A `(str, str)` tuple, copied out (Merkle inputs are small; copying keeps this safe).
fn leaf_pair(obj: &Bound<'_, PyAny>) -> CoreResult<(String, String)> {
    let bad = || {
        CoreError::new(
            ErrorKind::InvalidMerkleInput,
            format!(
                "a leaf must be a (cid, embedding_hash_hex) pair of str, got {}",
                type_name(obj)
            ),
        )
    };
    let t = obj.downcast::<PyTuple>().map_err(|_| bad())?;
    if t.len() != 2 {
        return Err(bad());
    }
    let a: String = t.get_item(0).and_then(|x| x.extract()).map_err(|_| bad())?;
    let b: String = t.get_item(1).and_then(|x| x.extract()).map_err(|_| bad())?;
    Ok((a, b))
}

fn pairs_arg(obj: &Bound<'_, PyAny>) -> CoreResult<Vec<(String, String)>> {
    leaves_arg(obj)?.iter().map(leaf_pair).collect()
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

fn leaves_arg<'py>(obj: &Bound<'py, PyAny>) -> CoreResult<Vec<Bound<'py, PyAny>>> {
    let list = obj.downcast::<PyList>().map_err(|_| {
        CoreError::new(
            ErrorKind::InvalidMerkleInput,
            format!(
                "leaves must be a list of (cid, embedding_hash_hex) tuples, got {}",
                type_name(obj)
            ),
        )
    })?;
    Ok(list.iter().collect())
}

#[pyfunction]
fn merkle_leaf(
    py: Python<'_>,
    cid: &Bound<'_, PyAny>,
    embedding_hash_hex: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let c = as_str(cid, ErrorKind::InvalidMerkleInput, "cid").py_err(py)?;
    let e = hex_arg(embedding_hash_hex, ErrorKind::InvalidHex, "embedding hash").py_err(py)?;
    merkle::leaf_hash(c, e).map(hex::encode).py_err(py)
}

#[pyfunction]
fn merkle_root(py: Python<'_>, leaves: &Bound<'_, PyAny>) -> PyResult<String> {
    let pairs = pairs_arg(leaves).py_err(py)?;
    py.allow_threads(|| merkle::root(&as_refs(&pairs)).map(hex::encode))
        .py_err(py)
}

#[pyfunction]
fn merkle_proof(
    py: Python<'_>,
    leaves: &Bound<'_, PyAny>,
    index: i64,
) -> PyResult<Vec<(&'static str, String)>> {
    let pairs = pairs_arg(leaves).py_err(py)?;
    let steps = py
        .allow_threads(|| merkle::proof(&as_refs(&pairs), index))
        .py_err(py)?;
    Ok(steps
        .into_iter()
        .map(|(side, h)| (side.as_str(), hex::encode(h)))
        .collect())
}

#[pyfunction]
fn verify_merkle_proof(
    py: Python<'_>,
    root_hex: &Bound<'_, PyAny>,
    leaf: &Bound<'_, PyAny>,
    proof: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let r = hex_arg(root_hex, ErrorKind::InvalidHex, "merkle root").py_err(py)?;
    let (c, e) = leaf_pair(leaf).py_err(py)?;
    let mut steps: Vec<Step> = Vec::new();
    let bad_step = |o: &Bound<'_, PyAny>| {
        CoreError::new(
            ErrorKind::InvalidMerkleInput,
            format!(
                "a proof step must be a (\"L\"|\"R\", hash_hex) pair of str, got {}",
                type_name(o)
            ),
        )
    };
    for step in leaves_arg(proof)
        .map_err(|_| {
            CoreError::new(
                ErrorKind::InvalidMerkleInput,
                "proof must be a list of steps",
            )
        })
        .py_err(py)?
    {
        let (side, h) = leaf_pair(&step).map_err(|_| bad_step(&step)).py_err(py)?;
        let side = Side::parse(&side).py_err(py)?;
        let h = proof::decode32(&h, ErrorKind::InvalidHex, "proof step hash").py_err(py)?;
        steps.push((side, h));
    }
    merkle::verify(r, &c, &e, &steps).py_err(py)
}

#[pymodule]
fn engram_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DEPTH", MAX_DEPTH)?;
    m.add("THREADS", crate::par::threads())?;
    m.add_function(wrap_pyfunction!(canonical_json, m)?)?;
    m.add_function(wrap_pyfunction!(float_repr, m)?)?;
    m.add_function(wrap_pyfunction!(float_reprs, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_hash, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(compute_cid, m)?)?;
    m.add_function(wrap_pyfunction!(compute_cids, m)?)?;
    m.add_function(wrap_pyfunction!(content_cid, m)?)?;
    m.add_function(wrap_pyfunction!(new_nonce, m)?)?;
    m.add_function(wrap_pyfunction!(proof_v1, m)?)?;
    m.add_function(wrap_pyfunction!(proofs_v1, m)?)?;
    m.add_function(wrap_pyfunction!(proof_v2, m)?)?;
    m.add_function(wrap_pyfunction!(proofs_v2, m)?)?;
    m.add_function(wrap_pyfunction!(verify_proof_v1, m)?)?;
    m.add_function(wrap_pyfunction!(verify_proof_v2, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_leaf, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_root, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_proof, m)?)?;
    m.add_function(wrap_pyfunction!(verify_merkle_proof, m)?)?;
    Ok(())
}
