//! A minimal reader for the Python buffer protocol that hands out raw bytes.
//!
//! PyO3's `PyBuffer<f32>` refuses unaligned memory (it hands out `&[f32]`) and accepts
//! any byte order. We only ever read bytes, so we take the buffer ourselves: any
//! alignment, native float32 only, no copy.

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::c_char;

/// A held buffer export; released (under the GIL) when dropped.
pub struct RawBuffer {
    // Boxed so its address is stable: the exporter may keep pointers into the struct.
    view: Box<ffi::Py_buffer>,
}

// SAFETY: the view is only read after acquisition and released with the GIL held; the
// memory it describes stays valid until release (the exporter guarantees that).
unsafe impl Send for RawBuffer {}
unsafe impl Sync for RawBuffer {}

impl RawBuffer {
    /// `PyObject_GetBuffer(obj, PyBUF_FULL_RO)`; `None` if `obj` exports no buffer.
    pub fn get(obj: &Bound<'_, PyAny>) -> Option<RawBuffer> {
        let mut view: Box<MaybeUninit<ffi::Py_buffer>> = Box::new(MaybeUninit::uninit());
        // SAFETY: `obj` is a live object (we hold the GIL through `Bound`), `view` points to
        // writable memory for one Py_buffer.
        let rc =
            unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_FULL_RO) };
        if rc != 0 {
            // Clear the exception the failed call set; the caller reports its own error.
            let _ = PyErr::take(obj.py());
            return None;
        }
        // SAFETY: PyObject_GetBuffer returned 0, so it filled the view.
        Some(RawBuffer {
            view: unsafe { view.assume_init() },
        })
    }

    /// The struct-module format string (`"B"` when the exporter gives none).
    pub fn format(&self) -> &[u8] {
        if self.view.format.is_null() {
            return b"B";
        }
        // SAFETY: a non-null format is a NUL-terminated string owned by the export.
        unsafe { CStr::from_ptr(self.view.format) }.to_bytes()
    }

    pub fn itemsize(&self) -> usize {
        usize::try_from(self.view.itemsize).unwrap_or(0)
    }

    pub fn ndim(&self) -> usize {
        usize::try_from(self.view.ndim).unwrap_or(0)
    }

    pub fn shape(&self) -> Vec<usize> {
        let n = self.ndim();
        if self.view.shape.is_null() || n == 0 {
            return if n == 1 {
                vec![self.len_bytes() / self.itemsize().max(1)]
            } else {
                Vec::new()
            };
        }
        // SAFETY: with PyBUF_ND requested, `shape` points to `ndim` Py_ssize_t values.
        let dims = unsafe { std::slice::from_raw_parts(self.view.shape, n) };
        dims.iter()
            .map(|d| usize::try_from(*d).unwrap_or(0))
            .collect()
    }

    pub fn len_bytes(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }

    pub fn is_c_contiguous(&self) -> bool {
        // SAFETY: the view is a valid, held export.
        unsafe { ffi::PyBuffer_IsContiguous(&*self.view, b'C' as c_char) != 0 }
    }

    /// The exported bytes, in memory order (for a C-contiguous buffer: item order).
    pub fn bytes(&self) -> &[u8] {
        let len = self.len_bytes();
        if len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: the export guarantees `len` readable bytes at `buf` until released, and
        // `self` holds the export for the lifetime of the returned slice. u8 has no
        // alignment requirement. (Another thread mutating the array meanwhile changes what
        // we hash, as with any reader; it cannot free or move the memory.)
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, len) }
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        Python::with_gil(|_| {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is
            // released exactly once, here, with the GIL held.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}
