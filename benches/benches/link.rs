//! Link and latency evaluation per token for 8 devices (the paper's
//! scenario): fading draw → channel power gain (down and up) → device link →
//! Shannon rates (eq. 2, 3) → expert latency (eq. 6), for every device; in
//! `f32` and `f64`. Also the min–max bandwidth allocation among the two
//! selected devices of a token, and both path-loss models' per-device cost.
//!
//! `cargo bench -p wdmoe-benches --bench link`

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use wdmoe_benches::{count_allocations, CountingAlloc, Xorshift, MEASUREMENT, WARM_UP};
use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link::{self, Uma};
use wdmoe_core::{bandwidth, Float};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const DEVICES: usize = 8;
/// Tokens per criterion iteration (throughput is reported per token).
const TOKENS: usize = 128;

/// The paper's setting: 3.5 GHz, 10 W down / 0.2 W up, 100 MHz split evenly,
/// devices 50–400 m away with heterogeneous compute.
struct Setup<F> {
    model: LatencyModel<F>,
    path_loss_db: [F; DEVICES],
    compute_flops_per_s: [F; DEVICES],
    /// Rayleigh fading powers |h|² (Exp(1)), per token, device, direction.
    fading: Vec<[[F; 2]; DEVICES]>,
    bandwidth_hz: F,
}

impl<F: Float> Setup<F> {
    fn new() -> Self {
        let shape = ExpertShape::MIXTRAL_8X7B;
        let model = LatencyModel::new(
            shape.payload_bits(F::from_f64(16.0)).unwrap(),
            shape.flops_per_token(F::from_f64(4.0)).unwrap(),
            link::noise_psd_w_per_hz(F::from_f64(-174.0), F::from_f64(7.0)).unwrap(),
        )
        .unwrap();
        let mut path_loss_db = [F::ZERO; DEVICES];
        let mut compute_flops_per_s = [F::ZERO; DEVICES];
        for q in 0..DEVICES {
            let d = F::from_f64(50.0 + 50.0 * q as f64);
            path_loss_db[q] = link::free_space_path_loss_db(F::from_f64(3.5), d).unwrap();
            compute_flops_per_s[q] = F::from_f64(1e12 * (1.0 + (q % 3) as f64));
        }
        let mut rng = Xorshift::new(7);
        let mut exp1 = || F::from_f64(-(1.0 - rng.uniform()).ln());
        let fading = (0..TOKENS)
            .map(|_| core::array::from_fn(|_| [exp1(), exp1()]))
            .collect();
        Self {
            model,
            path_loss_db,
            compute_flops_per_s,
            fading,
            bandwidth_hz: F::from_f64(100e6 / DEVICES as f64),
        }
    }

    fn device(&self, token: usize, q: usize) -> DeviceLink<F> {
        let [hd, hu] = self.fading[token][q];
        let pl = self.path_loss_db[q];
        let gd = link::channel_power_gain(pl, hd).unwrap();
        let gu = link::channel_power_gain(pl, hu).unwrap();
        DeviceLink::new(
            F::from_f64(10.0),
            gd,
            F::from_f64(0.2),
            gu,
            self.compute_flops_per_s[q],
        )
        .unwrap()
    }

    /// Eq. (6) for all 8 devices of every token; returns a checksum.
    fn latencies(&self) -> F {
        let mut sum = F::ZERO;
        for token in 0..TOKENS {
            let mut latency_s = [F::ZERO; DEVICES];
            for (q, t) in latency_s.iter_mut().enumerate() {
                let dev = self.device(token, q);
                *t = self
                    .model
                    .expert_latency_s(&dev, black_box(self.bandwidth_hz))
                    .unwrap();
            }
            sum += black_box(latency_s)[token % DEVICES];
        }
        sum
    }

    /// Min–max allocation of 2 devices' even shares (25 MHz) among them.
    fn min_max_pairs(&self) -> F {
        let mut sum = F::ZERO;
        for token in 0..TOKENS {
            let pair = [
                self.device(token, token % DEVICES),
                self.device(token, (token + 3) % DEVICES),
            ];
            let mut out = [F::ZERO; 2];
            let total = self.bandwidth_hz * F::from_f64(2.0);
            sum += bandwidth::min_max(&self.model, black_box(&pair), total, &mut out).unwrap();
        }
        sum
    }
}

fn group<F: Float>(c: &mut Criterion, ty: &str) {
    let s = Setup::<F>::new();
    let (_, count) = count_allocations(|| (s.latencies(), s.min_max_pairs()));
    assert_eq!(count, 0, "the link/latency path allocated {count} times");

    let mut g = c.benchmark_group(format!("link/{ty}"));
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.bench_function("latency_8_devices_per_token", |b| b.iter(|| s.latencies()));
    g.bench_function("min_max_bandwidth_2_devices_per_token", |b| {
        b.iter(|| s.min_max_pairs())
    });
    g.finish();

    let uma = Uma::new(F::from_f64(25.0), F::from_f64(1.5)).unwrap();
    let d: Vec<F> = (0..TOKENS)
        .map(|i| F::from_f64(20.0 + 3.0 * i as f64))
        .collect();
    let mut g = c.benchmark_group(format!("path_loss/{ty}"));
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.bench_function("free_space", |b| {
        b.iter(|| {
            let mut acc = F::ZERO;
            for &d in &d {
                acc += link::free_space_path_loss_db(F::from_f64(3.5), black_box(d)).unwrap();
            }
            acc
        })
    });
    g.bench_function("uma_nlos_with_los_probability", |b| {
        b.iter(|| {
            let mut acc = F::ZERO;
            for &d in &d {
                acc += uma
                    .path_loss_db(F::from_f64(3.5), black_box(d), false)
                    .unwrap();
                acc += uma.los_probability(d).unwrap();
            }
            acc
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(30)
        .configure_from_args();
    group::<f32>(&mut c, "f32");
    group::<f64>(&mut c, "f64");
    c.final_summary();
}
