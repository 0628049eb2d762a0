//! The Hugging Face parity fixtures (`tests/fixtures/hf/`, made by
//! `scripts/make_hf_fixtures.py`): their `cases.json` schema, the float32
//! `.npy` logits, and the policy a case names.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use wdmoe_sim::model::{FixedLatency, MoeConfig};

/// A fixture model's `cases.json`.
#[derive(Deserialize)]
pub struct Cases {
    pub transformers_version: String,
    pub model: String,
    pub cases: Vec<Case>,
}

/// One case: a prompt, a policy, HF's prompt logits and greedy tokens.
#[derive(Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub k: usize,
    pub theta: f64,
    pub max_drops: Option<usize>,
    pub latency_s: Option<Vec<f64>>,
    pub logits_npy: String,
    pub greedy_new_ids: Vec<u32>,
    pub max_new_tokens: usize,
}

/// wdmoe-sim's directory: `WDMOE_SIM_DIR` when set (test binaries run on
/// another machine, e.g. the GPU one), else where it was built.
pub fn sim_dir() -> PathBuf {
    std::env::var_os("WDMOE_SIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

/// The directory of fixture model `model`.
pub fn fixture_dir(model: &str) -> PathBuf {
    sim_dir().join("tests/fixtures/hf").join(model)
}

/// `cases.json` of fixture model `model`.
pub fn cases(model: &str) -> Cases {
    let text = std::fs::read_to_string(fixture_dir(model).join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A little-endian float32 C-order `.npy` of any shape: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap();
    let shape_txt = &shape_txt[..shape_txt.find(')').unwrap()];
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = b[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// A 2-D float32 `.npy`: (rows, cols, values).
pub fn read_npy_2d(path: &Path) -> (usize, usize, Vec<f32>) {
    let (shape, data) = read_npy_f32(path);
    assert_eq!(shape.len(), 2);
    (shape[0], shape[1], data)
}

/// The policy and latencies of `case`: plain top-k at equal latencies when
/// it has none (θ must then be 0), else WDMoE at its fixed latencies.
pub fn moe_for(case: &Case, n_experts: usize) -> (MoeConfig, FixedLatency) {
    match &case.latency_s {
        None => {
            assert_eq!(case.theta, 0.0);
            (
                MoeConfig::top_k(case.k).unwrap(),
                FixedLatency::uniform(n_experts),
            )
        }
        Some(lat) => (
            MoeConfig::wdmoe(case.k, case.theta, case.max_drops.unwrap_or(usize::MAX)).unwrap(),
            FixedLatency::new(lat.clone()).unwrap(),
        ),
    }
}
