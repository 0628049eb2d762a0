//! The router-trace `.npy` reader (`Trace::from_bytes`) on any bytes: never
//! a panic; an accepted trace has a non-zero shape, finite logits of the
//! right length everywhere, and survives a write/read round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdmoe_sim::trace::{npy_bytes_f64, Trace};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = Trace::from_bytes(data) else {
        return;
    };
    let (n, l, e) = (t.tokens(), t.layers(), t.experts());
    assert!(n > 0 && l > 0 && e > 0);
    let mut all = Vec::with_capacity(n * l * e);
    for tok in 0..n {
        for layer in 0..l {
            let z = t.logits(tok, layer);
            assert_eq!(z.len(), e);
            assert!(z.iter().all(|v| v.is_finite()));
            all.extend_from_slice(z);
        }
    }
    // Out-of-range indices wrap instead of panicking.
    assert_eq!(t.logits(n, l), t.logits(0, 0));
    let back = Trace::from_bytes(&npy_bytes_f64(&[n, l, e], &all)).expect("round trip");
    assert_eq!(back, t);
});
