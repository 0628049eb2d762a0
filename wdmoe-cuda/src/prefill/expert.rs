//! [`ExpertFfn`]: one expert in both layouts, the decode or the prefill
//! kernels chosen by token count ([`prefers_prefill`], the one place that
//! rule lives; `moe::MoeLayer` asks it too).

use cust::memory::DeviceSlice;
use half::f16;

use super::*;
use crate::error::Result;
use crate::runtime::Gpu;

/// Token counts above which [`ExpertFfn`] (and the wdmoe-sim GPU layer) use
/// the tensor-core prefill kernels instead of the decode kernels: on an H200
/// the decode kernels take 106 µs at 16 tokens (prefill 119 µs) and, in two
/// launches of 16, 189 µs at 32 (prefill 119 µs); BENCHMARKS.md has the
/// crossover table.
pub const PREFILL_MIN_TOKENS: usize = 16;

/// Whether `tokens` rows per expert run faster on the prefill kernels on
/// this GPU (compute capability 9.0 and more than [`PREFILL_MIN_TOKENS`]).
pub fn prefers_prefill(gpu: &Gpu, tokens: usize) -> bool {
    gpu.info().cubin && tokens > PREFILL_MIN_TOKENS
}

/// One expert resident in both layouts, with its workspaces: `forward`
/// picks the decode kernels or the prefill kernels by token count
/// ([`prefers_prefill`]). Holds the weights twice (2 x 3 m m_h fp16).
pub struct ExpertFfn {
    pub(crate) decode: crate::ExpertWeights,
    pub(crate) prefill: Option<PrefillWeights>,
    pub(crate) dws: crate::FfnWorkspace,
    pub(crate) pws: Option<PrefillWorkspace>,
    pub(crate) cfg: crate::DecodeConfig,
    pub(crate) max_tokens: usize,
}

impl std::fmt::Debug for ExpertFfn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertFfn")
            .field("decode", &self.decode)
            .field("prefill", &self.prefill)
            .finish()
    }
}

impl ExpertFfn {
    /// Packs row-major W1, W3 `[m_h][m]` and W2 `[m][m_h]` for both paths
    /// (the prefill layout only on compute capability 9.0), with workspaces
    /// for up to `max_tokens` tokens per call.
    pub fn new(
        gpu: &Gpu,
        w1: &DeviceSlice<f16>,
        w3: &DeviceSlice<f16>,
        w2: &DeviceSlice<f16>,
        m: usize,
        m_h: usize,
        max_tokens: usize,
    ) -> Result<ExpertFfn> {
        let decode = crate::ExpertWeights::pack(gpu, w1, w3, w2, m, m_h)?;
        if max_tokens == 0 {
            return Err(shape("ExpertFfn::new", "max_tokens = 0".into()));
        }
        let (prefill, pws) = if gpu.info().cubin && max_tokens > PREFILL_MIN_TOKENS {
            (
                Some(PrefillWeights::pack(gpu, &[(w1, w3, w2)], m, m_h)?),
                Some(PrefillWorkspace::new(gpu, m, m_h, max_tokens)?),
            )
        } else {
            (None, None)
        };
        Ok(ExpertFfn {
            decode,
            prefill,
            dws: crate::FfnWorkspace::new(gpu, m, m_h)?,
            pws,
            cfg: crate::DecodeConfig::auto(gpu.info(), m, m_h),
            max_tokens,
        })
    }

    /// y = W2 (silu(W1 x) * (W3 x)) for `tokens` rows of x into `out`, on
    /// the faster path for that count. Returns whether the prefill kernels
    /// ran. More tokens than the `max_tokens` given to [`ExpertFfn::new`] is
    /// an [`crate::Error::Shape`] (as for the workspaces), never a silent slow path.
    pub fn forward(
        &mut self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        out: &mut DeviceSlice<f16>,
    ) -> Result<bool> {
        if tokens > self.max_tokens {
            return Err(shape(
                "ExpertFfn::forward",
                format!("{tokens} tokens, built for at most {}", self.max_tokens),
            ));
        }
        if let (Some(w), Some(ws)) = (&self.prefill, &mut self.pws) {
            if prefers_prefill(gpu, tokens) {
                ffn_prefill(gpu, w, 0, x, tokens, out, ws, None)?;
                return Ok(true);
            }
        }
        crate::ffn_decode(gpu, &self.decode, x, tokens, out, &mut self.dws, &self.cfg)?;
        Ok(false)
    }
}
