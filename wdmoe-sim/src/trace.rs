//! Recorded router logits: a small, strict `.npy` reader.
//!
//! # Format
//! A NumPy `.npy` file (format version 1.0, 2.0 or 3.0) holding one C-order
//! array of `float32` or `float64` (little- or big-endian: `<f4`, `<f8`,
//! `>f4`, `>f8`) of shape `\[tokens, layers, experts\]`: the router logits
//! (pre-softmax gate outputs) of every token at every MoE layer, tokens in
//! the order the model saw them. Record them from a real Mixtral with, e.g.,
//! forward hooks on each `block_sparse_moe.gate` and
//! `np.save("trace.npy", np.stack(per_token).astype(np.float32))`.
//!
//! Every value must be finite. Any malformed file — a bad magic string,
//! truncated header, unsupported dtype, Fortran order, a shape that is not
//! 3-D or has a zero or overflowing dimension, too few or too many data bytes,
//! a NaN or infinite logit — is a [`TraceError`] naming the problem; the
//! reader never panics.
//!
//! ```
//! use wdmoe_sim::trace::{Trace, npy_bytes_f32};
//! let bytes = npy_bytes_f32(&[1, 2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
//! let t = Trace::from_bytes(&bytes).unwrap();
//! assert_eq!((t.tokens(), t.layers(), t.experts()), (1, 2, 3));
//! assert_eq!(t.logits(0, 1), &[3.0, 4.0, 5.0]);
//! assert!(Trace::from_bytes(b"not a npy file").is_err());
//! ```

use std::fmt;

/// Why a trace file was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError(pub String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid router trace: {}", self.0)
    }
}

impl std::error::Error for TraceError {}

fn bad<T>(msg: impl Into<String>) -> Result<T, TraceError> {
    Err(TraceError(msg.into()))
}

/// Largest number of logits a trace may hold (2^27, 1 GiB as `f64`: a
/// million tokens of Mixtral's 32 layers × 8 experts is 2^28 bytes as `f4`).
pub const MAX_TRACE_VALUES: usize = 1 << 27;

/// Largest `.npy` file read \[bytes\]: the values as `f8` plus 1 MiB of
/// header, checked before the file is read.
pub const MAX_TRACE_FILE_BYTES: u64 = (MAX_TRACE_VALUES as u64) * 8 + (1 << 20);

/// Router logits of shape `\[tokens, layers, experts\]`, stored as `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    tokens: usize,
    layers: usize,
    experts: usize,
    data: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F4,
    F8,
}

impl Trace {
    /// A trace from a flat C-order buffer of `tokens × layers × experts`
    /// finite logits.
    pub fn new(
        tokens: usize,
        layers: usize,
        experts: usize,
        data: Vec<f64>,
    ) -> Result<Self, TraceError> {
        if tokens == 0 || layers == 0 || experts == 0 {
            return bad(format!(
                "shape [{tokens}, {layers}, {experts}] has a zero dimension"
            ));
        }
        let want = tokens
            .checked_mul(layers)
            .and_then(|x| x.checked_mul(experts))
            .filter(|&x| x <= MAX_TRACE_VALUES)
            .ok_or_else(|| TraceError("shape is too large".into()))?;
        if data.len() != want {
            return bad(format!(
                "shape [{tokens}, {layers}, {experts}] needs {want} values, got {}",
                data.len()
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            let (t, r) = (i / (layers * experts), i % (layers * experts));
            return bad(format!(
                "logit [{t}, {}, {}] is {} (every logit must be finite)",
                r / experts,
                r % experts,
                data[i]
            ));
        }
        Ok(Self {
            tokens,
            layers,
            experts,
            data,
        })
    }

    /// Parses a `.npy` file's bytes (see the module docs for the format).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TraceError> {
        const MAGIC: &[u8] = b"\x93NUMPY";
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return bad("not a .npy file (missing the \\x93NUMPY magic string)");
        }
        let major = bytes[6];
        let (header_len, start): (usize, usize) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return bad("truncated header length");
                }
                let l = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                (l as usize, 12)
            }
            v => return bad(format!("unsupported .npy format version {v}")),
        };
        let end = start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                TraceError(format!(
                    "header claims {header_len} bytes but the file has only {}",
                    bytes.len().saturating_sub(start)
                ))
            })?;
        let header = std::str::from_utf8(&bytes[start..end])
            .map_err(|_| TraceError("header is not valid UTF-8".into()))?;
        let (dtype, little, shape) = parse_header(header)?;
        if shape.len() != 3 {
            return bad(format!(
                "shape has {} dimensions; expected 3: [tokens, layers, experts]",
                shape.len()
            ));
        }
        let (t, l, e) = (shape[0], shape[1], shape[2]);
        if t == 0 || l == 0 || e == 0 {
            return bad(format!("shape [{t}, {l}, {e}] has a zero dimension"));
        }
        let count = t
            .checked_mul(l)
            .and_then(|x| x.checked_mul(e))
            .filter(|&x| x <= MAX_TRACE_VALUES)
            .ok_or_else(|| TraceError(format!("shape [{t}, {l}, {e}] is too large")))?;
        let size = match dtype {
            Dtype::F4 => 4,
            Dtype::F8 => 8,
        };
        let body = &bytes[end..];
        let want = count * size;
        if body.len() < want {
            return bad(format!(
                "data is truncated: shape [{t}, {l}, {e}] needs {want} bytes, got {}",
                body.len()
            ));
        }
        if body.len() > want {
            return bad(format!(
                "{} trailing bytes after the data of shape [{t}, {l}, {e}]",
                body.len() - want
            ));
        }
        let mut data = Vec::with_capacity(count);
        for c in body.chunks_exact(size) {
            let v = match (dtype, little) {
                (Dtype::F4, true) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                (Dtype::F4, false) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64,
                (Dtype::F8, true) => {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                }
                (Dtype::F8, false) => {
                    f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                }
            };
            data.push(v);
        }
        Self::new(t, l, e, data)
    }

    /// Reads a `.npy` file.
    /// A file larger than [`MAX_TRACE_FILE_BYTES`] is refused before it is
    /// read.
    pub fn from_path(path: &std::path::Path) -> Result<Self, TraceError> {
        use std::io::Read;
        let cannot = |e: std::io::Error| TraceError(format!("cannot read {}: {e}", path.display()));
        let f = std::fs::File::open(path).map_err(cannot)?;
        let too_big = || {
            TraceError(format!(
                "{}: larger than the limit of {MAX_TRACE_FILE_BYTES} bytes ({MAX_TRACE_VALUES} values)",
                path.display()
            ))
        };
        if f.metadata().is_ok_and(|m| m.len() > MAX_TRACE_FILE_BYTES) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        f.take(MAX_TRACE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_TRACE_FILE_BYTES {
            return Err(too_big());
        }
        Self::from_bytes(&bytes)
    }

    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Number of MoE layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// The logits of token `token` at layer `layer` (indices taken modulo the
    /// trace's shape, so this never panics).
    pub fn logits(&self, token: usize, layer: usize) -> &[f64] {
        let t = token % self.tokens;
        let l = layer % self.layers;
        let i = (t * self.layers + l) * self.experts;
        &self.data[i..i + self.experts]
    }
}

/// Parses the header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }`.
fn parse_header(h: &str) -> Result<(Dtype, bool, Vec<usize>), TraceError> {
    let h = h.trim_end_matches(['\n', ' ', '\0']).trim();
    let inner = h
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| TraceError("header is not a Python dict literal".into()))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or_else(|| {
            TraceError(format!("header: expected a quoted key at `{}`", clip(rest)))
        })?;
        let after = after.trim_start();
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| TraceError(format!("header: expected ':' after '{key}'")))?
            .trim_start();
        let after = match key {
            "descr" => {
                let (v, a) = quoted(after)
                    .ok_or_else(|| TraceError("header: 'descr' must be a string".into()))?;
                descr = Some(v.to_string());
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else {
                    return bad("header: 'fortran_order' must be True or False");
                }
            }
            "shape" => {
                let a = after
                    .strip_prefix('(')
                    .ok_or_else(|| TraceError("header: 'shape' must be a tuple".into()))?;
                let close = a
                    .find(')')
                    .ok_or_else(|| TraceError("header: unterminated 'shape' tuple".into()))?;
                let mut dims = Vec::new();
                for part in a[..close].split(',') {
                    let p = part.trim().trim_end_matches('L');
                    if p.is_empty() {
                        continue;
                    }
                    let d: usize = p.parse().map_err(|_| {
                        TraceError(format!(
                            "header: shape entry `{}` is not a non-negative integer",
                            clip(p)
                        ))
                    })?;
                    dims.push(d);
                }
                shape = Some(dims);
                &a[close + 1..]
            }
            other => return bad(format!("header: unexpected key '{}'", clip(other))),
        };
        let after = after.trim_start();
        rest = after.strip_prefix(',').unwrap_or(after).trim_start();
        if !after.starts_with(',') && !rest.is_empty() {
            return bad(format!("header: expected ',' at `{}`", clip(rest)));
        }
    }
    let descr = descr.ok_or_else(|| TraceError("header has no 'descr'".into()))?;
    let fortran = fortran.ok_or_else(|| TraceError("header has no 'fortran_order'".into()))?;
    let shape = shape.ok_or_else(|| TraceError("header has no 'shape'".into()))?;
    if fortran {
        return bad(
            "fortran_order=True is not supported (save a C-order array: np.ascontiguousarray)",
        );
    }
    let native_little = cfg!(target_endian = "little");
    let (little, code) = match descr.as_bytes().first() {
        Some(b'<') => (true, &descr[1..]),
        Some(b'>') => (false, &descr[1..]),
        Some(b'=') => (native_little, &descr[1..]),
        Some(b'|') => (native_little, &descr[1..]),
        _ => (native_little, descr.as_str()),
    };
    let dtype = match code {
        "f4" => Dtype::F4,
        "f8" => Dtype::F8,
        _ => {
            return bad(format!(
                "dtype '{}' is not supported (use float32 '<f4' or float64 '<f8')",
                clip(&descr)
            ))
        }
    };
    Ok((dtype, little, shape))
}

/// A quoted Python string at the start of `s` (single or double quotes, no escapes).
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((&body[..end], &body[end + 1..]))
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, header ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Encodes a little-endian `float32` `.npy` file (for tests and tools).
pub fn npy_bytes_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_bytes("<f4", shape, &data)
}

/// Encodes a little-endian `float64` `.npy` file (for tests and tools).
pub fn npy_bytes_f64(shape: &[usize], values: &[f64]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_bytes("<f8", shape, &data)
}

/// Collects router logits token by token and writes them in the format
/// [`Trace::from_bytes`] reads (`<f4`, shape `[tokens, layers, experts]`):
/// `wdmoe generate` and `wdmoe eval` record real traces with it
/// (`--record-trace F.npy`) for `wdmoe sweep`'s trace router.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRecorder {
    layers: usize,
    experts: usize,
    data: Vec<f32>,
}

impl TraceRecorder {
    /// An empty recording for `layers × experts` logits per token.
    pub fn new(layers: usize, experts: usize) -> Result<Self, TraceError> {
        if layers == 0 || experts == 0 {
            return bad(format!(
                "a recording of {layers} layers × {experts} experts"
            ));
        }
        Ok(Self {
            layers,
            experts,
            data: Vec::new(),
        })
    }

    /// Appends the logits of `n` tokens: `per_layer[l]` holds layer `l`'s
    /// logits, `[n][experts]`.
    pub fn push_tokens<L: AsRef<[f64]>>(&mut self, per_layer: &[L]) -> Result<(), TraceError> {
        let e = self.experts;
        if per_layer.len() != self.layers {
            return bad(format!(
                "{} layers of logits recorded into a trace of {} layers",
                per_layer.len(),
                self.layers
            ));
        }
        let n = per_layer[0].as_ref().len() / e;
        if let Some(l) = per_layer.iter().position(|z| z.as_ref().len() != n * e) {
            return bad(format!(
                "layer {l} has {} logits, expected {n} tokens × {e} experts",
                per_layer[l].as_ref().len()
            ));
        }
        for t in 0..n {
            for z in per_layer {
                self.data
                    .extend(z.as_ref()[t * e..(t + 1) * e].iter().map(|&v| v as f32));
            }
        }
        Ok(())
    }

    /// Tokens recorded so far.
    pub fn tokens(&self) -> usize {
        self.data.len() / (self.layers * self.experts)
    }

    /// The recording as `.npy` bytes; an error when it holds no token.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>, TraceError> {
        if self.tokens() == 0 {
            return bad("no token was recorded");
        }
        Ok(npy_bytes_f32(
            &[self.tokens(), self.layers, self.experts],
            &self.data,
        ))
    }

    /// Writes the recording to `path`.
    pub fn write(&self, path: &std::path::Path) -> Result<(), TraceError> {
        let bytes = self.to_npy_bytes()?;
        std::fs::write(path, bytes)
            .map_err(|e| TraceError(format!("cannot write {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_round_trip() {
        let mut r = TraceRecorder::new(2, 3).unwrap();
        // Two tokens at layer 0 and 1, token-major in the file.
        r.push_tokens(&[
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            vec![6.0, 7.0, 8.0, 9.0, 10.0, 11.0],
        ])
        .unwrap();
        r.push_tokens(&[vec![-1.0, -2.0, -3.0], vec![-4.0, -5.0, -6.0]])
            .unwrap();
        assert_eq!(r.tokens(), 3);
        let t = Trace::from_bytes(&r.to_npy_bytes().unwrap()).unwrap();
        assert_eq!((t.tokens(), t.layers(), t.experts()), (3, 2, 3));
        assert_eq!(t.logits(0, 1), &[6.0, 7.0, 8.0]);
        assert_eq!(t.logits(1, 0), &[3.0, 4.0, 5.0]);
        assert_eq!(t.logits(2, 1), &[-4.0, -5.0, -6.0]);
        assert!(r
            .push_tokens(&[vec![0.0; 3]])
            .unwrap_err()
            .0
            .contains("layers"));
        assert!(r
            .push_tokens(&[vec![0.0; 3], vec![0.0; 4]])
            .unwrap_err()
            .0
            .contains("layer 1"));
        assert!(TraceRecorder::new(2, 3).unwrap().to_npy_bytes().is_err());
        assert!(TraceRecorder::new(0, 3).is_err());
    }

    #[test]
    fn round_trip_f64_and_errors() {
        let b = npy_bytes_f64(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let t = Trace::from_bytes(&b).unwrap();
        assert_eq!(t.logits(1, 0), &[3.0, 4.0]);
        // Truncated data.
        assert!(Trace::from_bytes(&b[..b.len() - 1])
            .unwrap_err()
            .0
            .contains("truncated"));
        // Trailing bytes.
        let mut long = b.clone();
        long.push(0);
        assert!(Trace::from_bytes(&long).unwrap_err().0.contains("trailing"));
        // NaN.
        let nan = npy_bytes_f32(&[1, 1, 2], &[1.0, f32::NAN]);
        assert!(Trace::from_bytes(&nan).unwrap_err().0.contains("[0, 0, 1]"));
        // 2-D.
        let flat = npy_bytes_f32(&[2, 2], &[0.0; 4]);
        assert!(Trace::from_bytes(&flat).unwrap_err().0.contains("3"));
        // Header length beyond file.
        let mut cut = b.clone();
        cut.truncate(20);
        assert!(Trace::from_bytes(&cut).is_err());
        // Every prefix is an error, never a panic.
        for i in 0..b.len() {
            assert!(Trace::from_bytes(&b[..i]).is_err());
        }
    }

    #[test]
    fn big_endian_and_overflow() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let b = npy_bytes(">f4", &[1, 1, 2], &data);
        assert_eq!(Trace::from_bytes(&b).unwrap().logits(0, 0), &[1.5, -2.0]);
        let huge = npy_bytes("<f4", &[usize::MAX, 2, 2], &[]);
        assert!(Trace::from_bytes(&huge)
            .unwrap_err()
            .0
            .contains("too large"));
        let i8s = npy_bytes("<i8", &[1, 1, 1], &[0; 8]);
        assert!(Trace::from_bytes(&i8s).unwrap_err().0.contains("dtype"));
    }
}
