//! Weight matrices that stay where the checkpoint stores them: f16/bf16
//! tensors are read from the memory map and converted to f32 row block by
//! row block at each product (into a small per-thread buffer), so a
//! checkpoint is never converted whole into RAM; f32 weights are owned.
//! The conversion to f32 is exact, so a product gives the same bits as
//! one over the whole matrix converted at load.

use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

/// Storage of a half-precision matrix in a memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfDtype {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

#[derive(Clone)]
enum Data {
    Owned(Vec<f32>),
    Mapped {
        map: Arc<Mmap>,
        /// Byte offset of the first element in `map`.
        start: usize,
        /// Number of elements.
        len: usize,
        dtype: HalfDtype,
    },
}

/// A row-major weight matrix, flat: owned f32 values or f16/bf16 values
/// in a checkpoint's memory map (converted per use by [`WeightView::rows`]).
#[derive(Clone)]
pub struct WeightMatrix(Data);

impl std::fmt::Debug for WeightMatrix {
    // The values are left out (up to gigabytes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Data::Owned(v) => write!(f, "WeightMatrix(f32 × {})", v.len()),
            Data::Mapped { len, dtype, .. } => write!(f, "WeightMatrix(mapped {dtype:?} × {len})"),
        }
    }
}

impl PartialEq for WeightMatrix {
    /// Equal values (a mapped and an owned matrix may be equal).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl From<Vec<f32>> for WeightMatrix {
    fn from(v: Vec<f32>) -> Self {
        WeightMatrix(Data::Owned(v))
    }
}

impl WeightMatrix {
    /// `len` values of `dtype` at byte `start` of `map` (little-endian).
    /// `None` when they do not fit in the map.
    pub fn mapped(map: Arc<Mmap>, start: usize, len: usize, dtype: HalfDtype) -> Option<Self> {
        let end = len.checked_mul(2)?.checked_add(start)?;
        (end <= map.len()).then_some(WeightMatrix(Data::Mapped {
            map,
            start,
            len,
            dtype,
        }))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.0 {
            Data::Owned(v) => v.len(),
            Data::Mapped { len, .. } => *len,
        }
    }

    /// `true` when the matrix has no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `true` when the values stay in a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Data::Mapped { .. })
    }

    /// Bytes of RAM the values own (0 when mapped).
    pub fn owned_bytes(&self) -> usize {
        match &self.0 {
            Data::Owned(v) => 4 * v.len(),
            Data::Mapped { .. } => 0,
        }
    }

    /// A borrowed view for the products.
    pub fn view(&self) -> WeightView<'_> {
        match &self.0 {
            Data::Owned(v) => WeightView::F32(v),
            Data::Mapped {
                map,
                start,
                len,
                dtype,
            } => {
                let b = &map[*start..*start + 2 * *len];
                match dtype {
                    HalfDtype::F16 => WeightView::F16(b),
                    HalfDtype::Bf16 => WeightView::Bf16(b),
                }
            }
        }
    }

    /// Every value as f32, in order.
    pub fn iter(&self) -> Values<'_> {
        match self.view() {
            WeightView::F32(v) => Values::F32(v.iter()),
            WeightView::F16(b) => Values::Half(b.chunks_exact(2), half_table(HalfDtype::F16)),
            WeightView::Bf16(b) => Values::Half(b.chunks_exact(2), half_table(HalfDtype::Bf16)),
        }
    }

    /// The values converted to an owned f32 vector (e.g. for an upload).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.iter().copied().collect()
    }
}

/// f32 value of every 16-bit pattern of `dtype` (256 KiB each, built on
/// first use): [`WeightMatrix::iter`] hands out references into it.
fn half_table(dtype: HalfDtype) -> &'static [f32] {
    static F16: OnceLock<Vec<f32>> = OnceLock::new();
    static BF16: OnceLock<Vec<f32>> = OnceLock::new();
    let (cell, conv): (_, fn(u16) -> f32) = match dtype {
        HalfDtype::F16 => (&F16, |b| half::f16::from_bits(b).to_f32()),
        HalfDtype::Bf16 => (&BF16, |b| half::bf16::from_bits(b).to_f32()),
    };
    cell.get_or_init(|| (0..=u16::MAX).map(conv).collect())
}

/// Iterator over a [`WeightMatrix`]'s values as `&f32`.
pub enum Values<'a> {
    /// Owned f32 values.
    F32(std::slice::Iter<'a, f32>),
    /// 16-bit values and their f32 table.
    Half(std::slice::ChunksExact<'a, u8>, &'static [f32]),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a f32;
    fn next(&mut self) -> Option<&'a f32> {
        match self {
            Values::F32(it) => it.next(),
            Values::Half(it, table) => it
                .next()
                .map(|c| &table[u16::from_le_bytes([c[0], c[1]]) as usize]),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Values::F32(it) => it.size_hint(),
            Values::Half(it, _) => it.size_hint(),
        }
    }
}

/// A borrowed row-major matrix as the products read it: f32 values, or
/// little-endian f16/bf16 bytes converted per row block.
#[derive(Debug, Clone, Copy)]
pub enum WeightView<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 bytes (2 per value).
    F16(&'a [u8]),
    /// bf16 bytes (2 per value).
    Bf16(&'a [u8]),
}

impl<'a> From<&'a [f32]> for WeightView<'a> {
    fn from(v: &'a [f32]) -> Self {
        WeightView::F32(v)
    }
}

impl<'a> From<&'a Vec<f32>> for WeightView<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        WeightView::F32(v)
    }
}

impl<'a, const N: usize> From<&'a [f32; N]> for WeightView<'a> {
    fn from(v: &'a [f32; N]) -> Self {
        WeightView::F32(v)
    }
}

impl<'a> From<&'a WeightMatrix> for WeightView<'a> {
    fn from(w: &'a WeightMatrix) -> Self {
        w.view()
    }
}

impl<'a> WeightView<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            WeightView::F32(v) => v.len(),
            WeightView::F16(b) | WeightView::Bf16(b) => b.len() / 2,
        }
    }

    /// `true` when the matrix has no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `lo..hi` (flat indices) as f32: borrowed when stored as f32,
    /// else converted (exactly) into `buf`.
    pub fn values<'b>(&self, lo: usize, hi: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        let bytes = match *self {
            WeightView::F32(v) => return &v[lo..hi],
            WeightView::F16(b) | WeightView::Bf16(b) => &b[2 * lo..2 * hi],
        };
        // Grown, never shrunk nor cleared: every value is overwritten.
        if buf.len() < hi - lo {
            buf.resize(hi - lo, 0.0);
        }
        let out = &mut buf[..hi - lo];
        match self {
            WeightView::F16(_) => f16_to_f32(bytes, out),
            _ => bf16_to_f32(bytes, out),
        }
        out
    }

    /// Rows `r0..r1` of a matrix with `cols` columns (see [`Self::values`]).
    pub fn rows<'b>(&self, r0: usize, r1: usize, cols: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        self.values(r0 * cols, r1 * cols, buf)
    }
}

/// Little-endian bf16 `bytes` to f32 `out`: the 16 bits become the high
/// half of the f32 (exact; a loop the compiler vectorises). Equals
/// `half::bf16::to_f32` for every value but signalling NaNs, which that
/// quietens (a NaN either way).
fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

/// Little-endian f16 `bytes` to f32 `out` (exact), 64 values at a time
/// through `half`'s slice conversion (F16C when the CPU has it).
fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const LANES: usize = 64;
    let mut tmp = [half::f16::ZERO; LANES];
    for (o, c) in out.chunks_mut(LANES).zip(bytes.chunks(2 * LANES)) {
        let t = &mut tmp[..o.len()];
        for (h, b) in t.iter_mut().zip(c.chunks_exact(2)) {
            *h = half::f16::from_le_bytes([b[0], b[1]]);
        }
        t.convert_to_f32_slice(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8]) -> Arc<Mmap> {
        let mut m = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
        m.copy_from_slice(bytes);
        Arc::new(m.make_read_only().unwrap())
    }

    #[test]
    fn mapped_half_values_convert_exactly() {
        let vals = [1.0f32, -2.5, 0.333, 65504.0, -0.0, 1e-7];
        for dtype in [HalfDtype::F16, HalfDtype::Bf16] {
            let (bytes, want): (Vec<u8>, Vec<f32>) = match dtype {
                HalfDtype::F16 => (
                    vals.iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    vals.iter()
                        .map(|&v| half::f16::from_f32(v).to_f32())
                        .collect(),
                ),
                HalfDtype::Bf16 => (
                    vals.iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect(),
                    vals.iter()
                        .map(|&v| half::bf16::from_f32(v).to_f32())
                        .collect(),
                ),
            };
            // One byte of padding before the tensor: any even or odd offset works.
            let mut padded = vec![7u8];
            padded.extend(&bytes);
            let w = WeightMatrix::mapped(map_of(&padded), 1, vals.len(), dtype).unwrap();
            assert!(w.is_mapped());
            assert_eq!(w.owned_bytes(), 0);
            assert_eq!(w.len(), 6);
            assert_eq!(w.to_f32_vec(), want);
            let mut buf = Vec::new();
            // Rows 1..3 of a 3-column matrix = values 3..6.
            let r = w.view().rows(1, 2, 3, &mut buf).to_vec();
            assert_eq!(r, want[3..6]);
            assert_eq!(w, WeightMatrix::from(want.clone()));
            assert_eq!(want[1], -2.5);
        }
        let w = WeightMatrix::mapped(map_of(&[0u8; 4]), 1, 2, HalfDtype::F16);
        assert!(w.is_none(), "5 bytes do not fit in a map of 4");
    }

    #[test]
    fn owned_values_are_borrowed() {
        let w = WeightMatrix::from(vec![1.0, 2.0, 3.0, 4.0]);
        let mut buf = Vec::new();
        assert_eq!(w.view().rows(1, 2, 2, &mut buf), [3.0, 4.0]);
        assert!(buf.is_empty());
        assert_eq!(w.owned_bytes(), 16);
        assert!(!w.is_mapped());
    }

    #[test]
    fn products_over_mapped_halves_equal_products_over_converted_f32() {
        // Serial (2 x 40 x 30) and blocked parallel (3 x 300 x 101) paths;
        // one token (bf16: straight from the bytes), serial with a tail of
        // 5 values and parallel.
        for (n, d_in, d_out) in [(2, 40, 30), (3, 300, 101), (1, 37, 30), (1, 300, 301)] {
            let vals: Vec<f32> = (0..d_in * d_out)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 37.0)
                .collect();
            let x: Vec<f32> = (0..n * d_in)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            for dtype in [HalfDtype::F16, HalfDtype::Bf16] {
                let bytes: Vec<u8> = vals
                    .iter()
                    .flat_map(|&v| match dtype {
                        HalfDtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                        HalfDtype::Bf16 => half::bf16::from_f32(v).to_le_bytes(),
                    })
                    .collect();
                let w = WeightMatrix::mapped(map_of(&bytes), 0, vals.len(), dtype).unwrap();
                let owned = w.to_f32_vec();
                let y = crate::layer::cpu::matmul_t(&x, n, &w, d_in, d_out);
                let want = crate::layer::cpu::matmul_t(&x, n, &owned, d_in, d_out);
                assert_eq!(y.len(), n * d_out);
                assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(y.iter().any(|&v| v != 0.0));
            }
        }
    }
}
