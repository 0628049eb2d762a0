//! Shared input types of the wdmoe fuzz targets.
//!
//! The inputs are decoded from the fuzzer's bytes with a small, explicit byte
//! format (one `u8` at a time through [`Unstructured`]) rather than the derive
//! macro's layout, so that the hand-made seeds in `corpus/` can be written by
//! [`SelectInput::encode`] (see `examples/make_corpus.rs`) and stay meaningful
//! when `arbitrary` changes its derive layout. An exhausted input decodes as
//! zeros, so every byte string is a valid input.

use arbitrary::{Arbitrary, Result, Unstructured};

/// Experts the `select` target's output type holds: the `wdmoe` command's
/// capacity (DeepSeek-style MoEs have 256 experts).
pub const CAPACITY: usize = 256;

/// Reads one byte (0 once the input is exhausted).
pub fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u8::arbitrary(u)
}

/// Reads a little-endian `u16` from two bytes.
pub fn u16_le(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(u16::from_le_bytes([byte(u)?, byte(u)?]))
}

/// Reads a little-endian `u64` from eight bytes.
pub fn u64_le(u: &mut Unstructured<'_>) -> Result<u64> {
    let mut b = [0u8; 8];
    for x in &mut b {
        *x = byte(u)?;
    }
    Ok(u64::from_le_bytes(b))
}

/// A floating-point value, biased towards the values that break numerics:
/// NaN, ±∞, ±0, subnormals, the extremes, and ordinary numbers of any scale.
/// Materialised in `f32` or `f64` by [`Num::f32`] / [`Num::f64`] (a subnormal
/// of `f32` is a subnormal of `f32`, not an `f64` subnormal rounded to 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// NaN (quiet).
    Nan,
    /// +∞.
    PosInf,
    /// −∞.
    NegInf,
    /// +0.
    Zero,
    /// −0.
    NegZero,
    /// The smallest positive subnormal.
    MinSubnormal,
    /// The largest subnormal.
    MaxSubnormal,
    /// The smallest positive normal number.
    MinNormal,
    /// The largest finite number.
    Max,
    /// The most negative finite number.
    NegMax,
    /// Machine epsilon.
    Epsilon,
    /// `x / 16`: small values, exact in both types.
    Small(i8),
    /// `x / 100`.
    Centi(i16),
    /// `10^e`.
    Pow10(i8),
    /// `m · 10^e`: any ordinary value (latencies of 2.5e-4 s, gains of 3e-11).
    Sci(i16, i8),
    /// Raw bits (the low 32 for `f32`).
    Bits(u64),
}

impl Num {
    /// Decodes one tag byte and its payload.
    pub fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match byte(u)? % 16 {
            0 => Num::Nan,
            1 => Num::PosInf,
            2 => Num::NegInf,
            3 => Num::Zero,
            4 => Num::NegZero,
            5 => Num::MinSubnormal,
            6 => Num::MaxSubnormal,
            7 => Num::MinNormal,
            8 => Num::Max,
            9 => Num::NegMax,
            10 => Num::Epsilon,
            11 => Num::Small(byte(u)? as i8),
            12 => Num::Centi(u16_le(u)? as i16),
            13 => Num::Pow10(byte(u)? as i8),
            14 => Num::Sci(u16_le(u)? as i16, byte(u)? as i8),
            _ => Num::Bits(u64_le(u)?),
        })
    }

    /// The bytes [`Num::decode`] reads back as `self`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Num::Nan => out.push(0),
            Num::PosInf => out.push(1),
            Num::NegInf => out.push(2),
            Num::Zero => out.push(3),
            Num::NegZero => out.push(4),
            Num::MinSubnormal => out.push(5),
            Num::MaxSubnormal => out.push(6),
            Num::MinNormal => out.push(7),
            Num::Max => out.push(8),
            Num::NegMax => out.push(9),
            Num::Epsilon => out.push(10),
            Num::Small(x) => out.extend([11, x as u8]),
            Num::Centi(x) => {
                out.push(12);
                out.extend((x as u16).to_le_bytes());
            }
            Num::Pow10(e) => out.extend([13, e as u8]),
            Num::Sci(m, e) => {
                out.push(14);
                out.extend((m as u16).to_le_bytes());
                out.push(e as u8);
            }
            Num::Bits(b) => {
                out.push(15);
                out.extend(b.to_le_bytes());
            }
        }
    }

    /// The value as `f64`.
    pub fn f64(&self) -> f64 {
        match *self {
            Num::Nan => f64::NAN,
            Num::PosInf => f64::INFINITY,
            Num::NegInf => f64::NEG_INFINITY,
            Num::Zero => 0.0,
            Num::NegZero => -0.0,
            Num::MinSubnormal => f64::from_bits(1),
            Num::MaxSubnormal => f64::from_bits((1u64 << 52) - 1),
            Num::MinNormal => f64::MIN_POSITIVE,
            Num::Max => f64::MAX,
            Num::NegMax => f64::MIN,
            Num::Epsilon => f64::EPSILON,
            Num::Small(x) => x as f64 / 16.0,
            Num::Centi(x) => x as f64 / 100.0,
            Num::Pow10(e) => 10f64.powi(e as i32),
            Num::Sci(m, e) => m as f64 * 10f64.powi(e as i32),
            Num::Bits(b) => f64::from_bits(b),
        }
    }

    /// The value as `f32`.
    pub fn f32(&self) -> f32 {
        match *self {
            Num::MinSubnormal => f32::from_bits(1),
            Num::MaxSubnormal => f32::from_bits((1u32 << 23) - 1),
            Num::MinNormal => f32::MIN_POSITIVE,
            Num::Max => f32::MAX,
            Num::NegMax => f32::MIN,
            Num::Epsilon => f32::EPSILON,
            Num::Bits(b) => f32::from_bits(b as u32),
            other => other.f64() as f32,
        }
    }
}

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Num::decode(u)
    }
}

/// One decision for the `select` target: `wdmoe_core::select::select` on
/// these arguments, in `f32` or `f64`.
///
/// Byte format: `flags` (bit 0: f32; bit 1: the latency slice gets its own
/// length), `n: u16 LE % 320` (above the capacity 256 on purpose), `k: u16 LE
/// % 320`, `theta: Num`, `max_drops: u8`, then `n` logits, then the latencies
/// (`n`, or a `u8` length first when bit 1 is set).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectInput {
    /// Compute in `f32` (firmware) rather than `f64`.
    pub f32: bool,
    /// `k`, any value (0 and > n included).
    pub k: usize,
    /// `θ`, any value.
    pub theta: Num,
    /// `max_drops`.
    pub max_drops: usize,
    /// Router logits, 0..320 of them.
    pub logits: Vec<Num>,
    /// Per-expert latencies [s]; usually as many as the logits.
    pub latency_s: Vec<Num>,
}

impl SelectInput {
    /// Most experts the fuzzer generates (above [`CAPACITY`] on purpose).
    pub const MAX_N: usize = 320;

    /// The bytes that decode back to `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mismatch = self.logits.len() != self.latency_s.len();
        let mut out = vec![u8::from(self.f32) | (u8::from(mismatch) << 1)];
        out.extend((self.logits.len() as u16).to_le_bytes());
        out.extend((self.k as u16).to_le_bytes());
        self.theta.encode(&mut out);
        out.push(self.max_drops as u8);
        for x in &self.logits {
            x.encode(&mut out);
        }
        if mismatch {
            out.push(self.latency_s.len() as u8);
        }
        for x in &self.latency_s {
            x.encode(&mut out);
        }
        out
    }
}

impl<'a> Arbitrary<'a> for SelectInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let flags = byte(u)?;
        let n = u16_le(u)? as usize % Self::MAX_N;
        let k = u16_le(u)? as usize % Self::MAX_N;
        let theta = Num::decode(u)?;
        let max_drops = byte(u)? as usize;
        let mut logits = Vec::with_capacity(n);
        for _ in 0..n {
            logits.push(Num::decode(u)?);
        }
        let m = if flags & 2 != 0 { byte(u)? as usize } else { n };
        let mut latency_s = Vec::with_capacity(m);
        for _ in 0..m {
            latency_s.push(Num::decode(u)?);
        }
        Ok(Self {
            f32: flags & 1 != 0,
            k,
            theta,
            max_drops,
            logits,
            latency_s,
        })
    }
}

/// `f32` or `f64`, built from a [`Num`].
pub trait FuzzFloat: wdmoe_core::Float {
    /// The value of `x` in this type.
    fn from_num(x: Num) -> Self;
    /// Tolerance on Σ weights = 1 for up to 256 experts.
    const SUM_TOL: f64;
    /// A loose relative tolerance for comparisons of computed values.
    const REL_TOL: f64;
}

impl FuzzFloat for f32 {
    fn from_num(x: Num) -> Self {
        x.f32()
    }
    const SUM_TOL: f64 = 1e-4;
    const REL_TOL: f64 = 1e-3;
}

impl FuzzFloat for f64 {
    fn from_num(x: Num) -> Self {
        x.f64()
    }
    const SUM_TOL: f64 = 1e-10;
    const REL_TOL: f64 = 1e-9;
}

/// Input of the `link_latency` target: a precision, an operation selector and
/// a list of arguments (missing ones read as 0).
///
/// Byte format: `flags` (bit 0: f32), `op: u8`, then up to 64 [`Num`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInput {
    /// Compute in `f32` rather than `f64`.
    pub f32: bool,
    /// Which function (and sub-case) to call.
    pub op: u8,
    /// Arguments, in the order the operation reads them.
    pub args: Vec<Num>,
}

impl LinkInput {
    /// Most arguments decoded.
    pub const MAX_ARGS: usize = 64;

    /// Argument `i` (0 when absent).
    pub fn arg(&self, i: usize) -> Num {
        self.args.get(i).copied().unwrap_or(Num::Zero)
    }

    /// The bytes that decode back to `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.f32), self.op];
        for x in &self.args {
            x.encode(&mut out);
        }
        out
    }
}

impl<'a> Arbitrary<'a> for LinkInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let f32 = byte(u)? & 1 != 0;
        let op = byte(u)?;
        let mut args = Vec::new();
        while !u.is_empty() && args.len() < Self::MAX_ARGS {
            args.push(Num::decode(u)?);
        }
        Ok(Self { f32, op, args })
    }
}

/// Decodes `T` from raw fuzzer bytes (what `fuzz_target!(|x: T|)` does).
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Result<T> {
    T::arbitrary_take_rest(Unstructured::new(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_input_round_trips() {
        let x = SelectInput {
            f32: true,
            k: 2,
            theta: Num::Centi(20),
            max_drops: 1,
            logits: vec![Num::Small(3), Num::Sci(-12, -1), Num::Nan, Num::Bits(7)],
            latency_s: vec![Num::PosInf, Num::Pow10(-3), Num::MinSubnormal, Num::Max],
        };
        assert_eq!(decode::<SelectInput>(&x.encode()).unwrap(), x);
        let mut y = x.clone();
        y.latency_s.pop();
        assert_eq!(decode::<SelectInput>(&y.encode()).unwrap(), y);
    }

    #[test]
    fn subnormals_are_subnormal_in_both_types() {
        assert!(Num::MinSubnormal.f32() > 0.0 && !Num::MinSubnormal.f32().is_normal());
        assert!(Num::MaxSubnormal.f64() > 0.0 && !Num::MaxSubnormal.f64().is_normal());
    }
}
