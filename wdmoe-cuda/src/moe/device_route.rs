//! Device-side routing of the grouped (prefill) step, at any token count
//! (kernels/moe_route.cu): the router and wdmoe-core's policy per token on
//! the GPU (the port shared with the decode plan, kernels/policy.cuh), the
//! per-expert token lists by a stable counting sort (histogram per tile of
//! tokens; scans and scatter), the rows gathered in expert order.
//! The tables it builds are the host's [`super::RowTables`] encoding entry for
//! entry, so the grouped GEMMs (reading the row offsets on the device,
//! [`crate::prefill::ffn_grouped_device`]) and the combine run unchanged.
//!
//! The host side here: the launches (`route_select`, [`counting_sort`],
//! [`gather_sorted`]), the device tables ([`SortTables`]), and what the
//! check against wdmoe-core needs ([`selection_mismatch`],
//! [`groups_from_sel`]). The step itself is in `device_step.rs`.

use cust::memory::{DeviceBuffer, DeviceSlice};
use half::f16;

use super::encode::{Groups, TokenSelection};
use crate::error::{check_align, shape, Result};
use crate::launch::{kernel_params, Shape};
use crate::plan::{PolicyArgs, MAX_SLOTS};
use crate::router::Router;
use crate::runtime::{addr, Gpu};

/// Tokens per tile of the counting sort (`ROUTE_TILE` in moe_route.cu).
pub const ROUTE_TILE: usize = 256;

/// Ints per token of a `sel` row for top-`k`: count, `k` experts, `k` fp32
/// weight bits.
pub fn sel_width(k: usize) -> usize {
    1 + 2 * k
}

kernel_params! {
    struct RoutePolicy {
        logits: u64, e: i32, tokens: i32, pa: PolicyArgs, lat: u64, sel: u64, sw: i32,
    }
}

/// Router + wdmoe-core's policy (the device port) for `tokens` rows of `x`:
/// the router kernel of the host-routed step (`Router::route`: the same
/// logits bit for bit, and the same fp32 softmax) into `logits` and `probs`
/// (`[tokens][experts]`), then one warp per token runs the policy and writes
/// its `sel` row of [`sel_width`]`(pa.k)` ints (one launch where the router
/// takes 8 tokens per block, [`Router::rows_fit`]: each warp goes on to its
/// token's policy; else two). `lat`: per-token latencies
/// (`[tokens][experts]` f64 on the device) or None for `pa.lat`.
/// Asynchronous.
#[allow(clippy::too_many_arguments)]
pub(crate) fn route_select(
    gpu: &Gpu,
    router: &Router,
    x: &DeviceSlice<f16>,
    tokens: usize,
    pa: &PolicyArgs,
    lat: Option<&DeviceSlice<f64>>,
    logits: &mut DeviceSlice<f32>,
    probs: &mut DeviceSlice<f32>,
    sel: &mut DeviceSlice<i32>,
) -> Result<()> {
    const OP: &str = "route_select";
    let e = router.experts();
    let k = pa.k.max(0) as usize;
    let sw = sel_width(k);
    if tokens == 0
        || tokens > i32::MAX as usize
        || e == 0
        || e > MAX_SLOTS
        || k == 0
        || k > e
        || logits.len() < tokens * e
        || sel.len() < tokens * sw
        || lat.is_some_and(|l| l.len() < tokens * e)
    {
        return Err(shape(
            OP,
            format!(
                "tokens={tokens} e={e} k={k}: logits {}, sel {}, lat {:?}",
                logits.len(),
                sel.len(),
                lat.map(|l| l.len())
            ),
        ));
    }
    if router.rows_fit(tokens) {
        return router.route_policy_rows(
            gpu,
            x,
            tokens,
            logits,
            probs,
            pa,
            lat.map_or(0, addr),
            sel,
            sw,
        );
    }
    router.route(gpu, x, tokens, logits, probs)?;
    let params = RoutePolicy {
        logits: addr(logits),
        e: e as i32,
        tokens: tokens as i32,
        pa: *pa,
        lat: lat.map_or(0, addr),
        sel: addr(sel),
        sw: sw as i32,
    };
    // SAFETY: route_policy(const float* logits, int e, int tokens,
    // PolicyArgs pa (by value, #[repr(C)] mirror), const double* lat, int*
    // sel, int sw) = RoutePolicy. logits holds tokens x e floats, sel tokens
    // x sw ints, lat null or tokens x e doubles (checked above); block `tok`
    // touches only row `tok` of each; blockDim 32 as the kernel requires; e
    // <= WDMOE_MAX_SLOTS, 1 <= k <= e.
    unsafe {
        gpu.launch(
            &gpu.moe_route,
            "route_policy",
            Shape::new(tokens as u32, 32u32),
            params,
            || format!("tokens={tokens} experts={e} k={k}"),
        )
    }
}

/// The device tables of a counting sort for up to `tokens` tokens, `experts`
/// experts and `rows` rows: per-tile counts (scratch), the row
/// offsets per expert (`experts + 1`), the token of each row in expert order
/// (`idx`), and per token and its j-th expert in expert order the row and
/// combine weight (`slot`, `wts`: `[tokens][experts]`, -1 / 0 where none).
pub struct SortTables {
    counts: DeviceBuffer<i32>,
    /// `experts + 1` row offsets (expert q: rows `offsets[q]..offsets[q+1]`).
    pub offsets: DeviceBuffer<i32>,
    /// Token of each row, rows in expert order (`rows` entries; past
    /// `offsets[experts]`: unspecified).
    pub idx: DeviceBuffer<i32>,
    /// `[tokens][experts]`: row of token t's j-th expert (expert order), -1.
    pub slot: DeviceBuffer<i32>,
    /// `[tokens][experts]`: its combine weight, 0.
    pub wts: DeviceBuffer<f32>,
    tokens: usize,
    experts: usize,
    rows: usize,
}

impl std::fmt::Debug for SortTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortTables")
            .field("tokens", &self.tokens)
            .field("experts", &self.experts)
            .field("rows", &self.rows)
            .finish()
    }
}

impl SortTables {
    /// Tables for up to `tokens` tokens of `experts` experts (1..=64) and up
    /// to `rows` rows.
    pub fn new(gpu: &Gpu, tokens: usize, experts: usize, rows: usize) -> Result<SortTables> {
        if experts == 0 || experts > MAX_SLOTS || tokens > i32::MAX as usize {
            return Err(shape(
                "SortTables::new",
                format!("{tokens} tokens, {experts} experts (1..={MAX_SLOTS})"),
            ));
        }
        let tiles = tokens.div_ceil(ROUTE_TILE).max(1);
        Ok(SortTables {
            counts: gpu.alloc(tiles * experts)?,
            offsets: gpu.alloc(experts + 1)?,
            idx: gpu.alloc(rows)?,
            slot: gpu.alloc(tokens * experts)?,
            wts: gpu.alloc(tokens * experts)?,
            tokens,
            experts,
            rows,
        })
    }

    /// Most tokens.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Experts.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Most rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

kernel_params! {
    struct RouteCount { sel: u64, sw: i32, tokens: i32, e: i32, counts: u64 }
}
kernel_params! {
    struct RouteScatter {
        sel: u64, sw: i32, tokens: i32, e: i32, counts: u64, tiles: i32, offsets: u64, idx: u64,
        rows_cap: i32, slot: u64, w: u64,
    }
}

/// The stable counting sort of `tokens` tokens' selections (`sel`, rows of
/// `sw` = [`sel_width`]`(k)` ints) over `t.experts()` experts into `t`: two
/// launches (a histogram per tile; the scans and the scatter, as the
/// first's programmatic dependent), asynchronous. Rows:
/// experts in order, tokens in order within an expert; `slot`/`wts` as
/// [`super::RowTables`]. Needs `tokens * k <= t.rows()` (every row fits).
pub fn counting_sort(
    gpu: &Gpu,
    sel: &DeviceSlice<i32>,
    sw: usize,
    tokens: usize,
    t: &mut SortTables,
) -> Result<()> {
    const OP: &str = "counting_sort";
    let e = t.experts;
    let k = sw.saturating_sub(1) / 2;
    if tokens == 0
        || tokens > t.tokens
        || sw % 2 != 1
        || k == 0
        || k > e
        || sel.len() < tokens * sw
        || tokens * k > t.rows
        || t.rows > i32::MAX as usize
    {
        return Err(shape(
            OP,
            format!(
                "tokens={tokens} (tables for {}), sel width {sw} (1 + 2k, k <= {e}), sel {} ints, rows {} (need tokens x k)",
                t.tokens,
                sel.len(),
                t.rows
            ),
        ));
    }
    let tiles = tokens.div_ceil(ROUTE_TILE);
    let count = RouteCount {
        sel: addr(sel),
        sw: sw as i32,
        tokens: tokens as i32,
        e: e as i32,
        counts: addr(&t.counts),
    };
    // SAFETY: route_count(const int* sel, int sw, int tokens, int e, int*
    // counts) = RouteCount: sel holds tokens x sw ints (checked); block b
    // reads rows of tokens < tokens only and writes counts[b * e .. + e),
    // inside the tiles x e ints of t.counts (tiles <= t's tiles); blockDim =
    // ROUTE_TILE as the kernel requires; e <= WDMOE_MAX_SLOTS.
    unsafe {
        gpu.launch(
            &gpu.moe_route,
            "route_count",
            Shape::new(tiles as u32, ROUTE_TILE as u32),
            count,
            || format!("tokens={tokens} experts={e}"),
        )?;
    }
    let scatter = RouteScatter {
        sel: addr(sel),
        sw: sw as i32,
        tokens: tokens as i32,
        e: e as i32,
        counts: addr(&t.counts),
        tiles: tiles as i32,
        offsets: addr(&t.offsets),
        idx: addr(&t.idx),
        rows_cap: t.rows as i32,
        slot: addr(&t.slot),
        w: addr(&t.wts),
    };
    // SAFETY: route_scatter(const int* sel, int sw, int tokens, int e, const
    // int* counts, int tiles, int* offsets, int* idx, int rows_cap, int*
    // slot, float* w) = RouteScatter: sel as above; counts tiles x e; offsets
    // e + 1 ints (block 0 writes them); the kernel writes idx only below
    // rows_cap = t.rows (its length), slot/w only in rows t < tokens of
    // [tokens][e] (t holds t.tokens >= tokens rows); blockDim = ROUTE_TILE.
    // PDL: it reads the counts only after griddepcontrol.wait (route_count
    // complete), and before it only `sel`, written before route_count began.
    unsafe {
        gpu.launch(
            &gpu.moe_route,
            "route_scatter",
            Shape::new(tiles as u32, ROUTE_TILE as u32).pdl(true),
            scatter,
            || format!("tokens={tokens} experts={e} rows={}", t.rows),
        )
    }
}

kernel_params! {
    struct RouteGather {
        x: u64, idx: u64, offsets: u64, e: i32, xs: u64, rows_cap: i32, m: i32, x_rows: i64,
    }
}

/// `xs[r] = x[idx[r]]` for the rows r the device's sort produced (`r <
/// offsets[experts]`, read on the device; at most `rows_cap`), rows of `m`
/// fp16; `x_rows`: rows of x that may be read (others give zeros).
pub fn gather_sorted(
    gpu: &Gpu,
    x: &DeviceSlice<f16>,
    x_rows: usize,
    t: &SortTables,
    rows_cap: usize,
    m: usize,
    xs: &mut DeviceSlice<f16>,
) -> Result<()> {
    const OP: &str = "gather_sorted";
    if m == 0
        || m % 8 != 0
        || rows_cap > t.rows
        || rows_cap > i32::MAX as usize
        || xs.len() < rows_cap * m
        || x.len() < x_rows * m
    {
        return Err(shape(
            OP,
            format!(
                "m={m} (multiple of 8), {rows_cap} rows (tables {}) into {} elements, x {} for {x_rows} rows",
                t.rows,
                xs.len(),
                x.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "xs", addr(xs), 16)?;
    if rows_cap == 0 {
        return Ok(());
    }
    let params = RouteGather {
        x: addr(x),
        idx: addr(&t.idx),
        offsets: addr(&t.offsets),
        e: t.experts as i32,
        xs: addr(xs),
        rows_cap: rows_cap as i32,
        m: m as i32,
        x_rows: x_rows as i64,
    };
    let grid = gpu.grid_1d((rows_cap * m / 8) as u64, 8);
    // SAFETY: route_gather(const half* x, const int* idx, const int* offsets,
    // int e, half* xs, int rows_cap, int m, long long x_rows) = RouteGather:
    // it reads offsets[e] (e + 1 ints), idx below min(offsets[e], rows_cap)
    // <= t.rows, x only at rows in [0, x_rows) (x holds x_rows x m), writes
    // xs below rows_cap x m (checked); 16-byte aligned, m % 8 == 0.
    unsafe {
        gpu.launch(
            &gpu.moe_route,
            "route_gather",
            Shape::new(grid, 256),
            params,
            || format!("rows_cap={rows_cap} m={m}"),
        )
    }
}

/// The device's choice of token `t` from its `sel` row (`sw` ints): `(expert,
/// fp32 weight bits)` sorted by expert; None if the row is malformed (count
/// out of range, an expert out of range or repeated).
fn device_choice(sel: &[i32], sw: usize, t: usize, e: usize) -> Option<Vec<(usize, u32)>> {
    let k = sw.saturating_sub(1) / 2;
    let row = sel.get(t * sw..(t + 1) * sw)?;
    let ns = usize::try_from(row[0]).ok().filter(|&n| n <= k)?;
    let mut v = Vec::with_capacity(ns);
    for i in 0..ns {
        let q = usize::try_from(row[1 + i]).ok().filter(|&q| q < e)?;
        v.push((q, row[1 + k + i] as u32));
    }
    v.sort_unstable_by_key(|p| p.0);
    if v.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(v)
}

/// The first token whose device selection (`sel`, rows of `sw` ints) is not
/// wdmoe-core's `selections` (other experts, or a weight that differs in
/// any fp32 bit; the order within a token does not matter: the groups are
/// in expert order), or None when all agree. A token the device could not
/// route (count 0) never agrees (wdmoe-core selects at least one expert).
pub fn selection_mismatch(
    sel: &[i32],
    sw: usize,
    selections: &[TokenSelection],
    e: usize,
) -> Option<usize> {
    for (t, s) in selections.iter().enumerate() {
        let Some(dev) = device_choice(sel, sw, t, e) else {
            return Some(t);
        };
        let mut host: Vec<(usize, u32)> = s
            .experts()
            .iter()
            .zip(s.weights())
            .map(|(&q, &w)| (q, (w as f32).to_bits()))
            .collect();
        host.sort_unstable_by_key(|p| p.0);
        if host.is_empty() || dev != host {
            return Some(t);
        }
    }
    None
}

/// The per-expert groups of the device's selections of `tokens` tokens
/// (`sel`, rows of `sw` ints; tokens in order), as [`super::route_tokens`]
/// builds them from wdmoe-core's: for the steps whose check is skipped.
/// An error names the first malformed row.
pub fn groups_from_sel(sel: &[i32], sw: usize, tokens: usize, e: usize) -> Result<Groups> {
    let mut groups: Groups = vec![Vec::new(); e];
    for t in 0..tokens {
        let choice = device_choice(sel, sw, t, e).ok_or_else(|| {
            shape(
                "groups_from_sel",
                format!("token {t}: malformed device selection row (width {sw}, {e} experts)"),
            )
        })?;
        for (q, bits) in choice {
            groups[q].push((t, f32::from_bits(bits)));
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::{route_tokens, RowTables};
    use wdmoe_core::select::Policy;

    /// `sel` rows from wdmoe-core's selections, as route_select writes them
    /// (count, experts in the policy's order, fp32 weight bits).
    fn sel_of(selections: &[TokenSelection], k: usize) -> Vec<i32> {
        let sw = sel_width(k);
        let mut sel = vec![0i32; selections.len() * sw];
        for (t, s) in selections.iter().enumerate() {
            let row = &mut sel[t * sw..(t + 1) * sw];
            row[0] = s.experts().len() as i32;
            for (i, (&q, &w)) in s.experts().iter().zip(s.weights()).enumerate() {
                row[1 + i] = q as i32;
                row[1 + k + i] = (w as f32).to_bits() as i32;
            }
        }
        sel
    }

    fn routed() -> (crate::moe::Routing, usize) {
        // 5 tokens, 4 experts, WDMoE θ = 0.3 with unequal latencies: some
        // tokens keep 2 experts, some 1.
        let logits = [
            2.0f32, 1.9, 0.0, -1.0, //
            0.0, 3.0, 0.1, 2.9, //
            1.0, 1.0, 1.0, 1.0, //
            -2.0, 0.0, 4.0, 0.5, //
            0.3, 0.2, 0.1, 0.0,
        ];
        let lat = [0.01, 0.05, 0.01, 0.02];
        let policy = Policy::new(2, 0.3, 1).unwrap();
        (route_tokens(&logits, 5, 4, &policy, &lat).unwrap(), 2)
    }

    #[test]
    fn device_rows_that_equal_wdmoe_core_pass_and_any_difference_is_found() {
        let (r, k) = routed();
        let sw = sel_width(k);
        let sel = sel_of(&r.selections, k);
        assert_eq!(selection_mismatch(&sel, sw, &r.selections, 4), None);
        // Experts of a token in another order: still the same groups.
        let mut swapped = sel.clone();
        let two = (0..5)
            .find(|&t| sel[t * sw] == 2)
            .expect("a token with 2 experts");
        swapped.swap(two * sw + 1, two * sw + 2);
        swapped.swap(two * sw + 1 + k, two * sw + 2 + k);
        assert_eq!(selection_mismatch(&swapped, sw, &r.selections, 4), None);
        // One ulp of one weight.
        let mut ulp = sel.clone();
        ulp[3 * sw + 1 + k] += 1;
        assert_eq!(selection_mismatch(&ulp, sw, &r.selections, 4), Some(3));
        // Another expert.
        let mut other = sel.clone();
        other[4 * sw + 1] = (other[4 * sw + 1] + 1) % 4;
        assert_eq!(selection_mismatch(&other, sw, &r.selections, 4), Some(4));
        // A failed token (count 0), a count past k, an expert out of range,
        // a repeated expert, a short buffer.
        for (t, i, v) in [(1, 0, 0), (1, 0, 3), (2, 1, 4), (0, 1, -1)] {
            let mut bad = sel.clone();
            bad[t * sw + i] = v;
            assert_eq!(selection_mismatch(&bad, sw, &r.selections, 4), Some(t));
        }
        let mut rep = sel.clone();
        rep[two * sw + 2] = rep[two * sw + 1];
        assert_eq!(selection_mismatch(&rep, sw, &r.selections, 4), Some(two));
        assert_eq!(
            selection_mismatch(&sel[..4 * sw], sw, &r.selections, 4),
            Some(4)
        );
    }

    #[test]
    fn groups_from_device_rows_are_wdmoe_cores_groups() {
        let (r, k) = routed();
        let sw = sel_width(k);
        let sel = sel_of(&r.selections, k);
        let g = groups_from_sel(&sel, sw, 5, 4).unwrap();
        assert_eq!(g, r.groups);
        // And so the same row tables.
        assert_eq!(
            RowTables::new(5, &g).unwrap(),
            RowTables::new(5, &r.groups).unwrap()
        );
        let rows: usize = g.iter().map(Vec::len).sum();
        assert!(
            rows > 5 && rows < 10,
            "some tokens dropped one expert: {rows}"
        );
        let mut bad = sel.clone();
        bad[2 * sw + 1] = 9;
        let err = groups_from_sel(&bad, sw, 5, 4).unwrap_err();
        assert!(err.to_string().contains("token 2"), "{err}");
    }

    #[test]
    fn sel_width_is_count_experts_weights() {
        assert_eq!(sel_width(1), 3);
        assert_eq!(sel_width(2), 5);
        assert_eq!(sel_width(MAX_SLOTS), 1 + 2 * MAX_SLOTS);
    }
}
