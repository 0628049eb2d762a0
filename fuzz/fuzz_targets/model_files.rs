//! The model's file parsers on any bytes: the first byte picks `config.json`
//! (`MixtralConfig::from_json_str`) or a `model.safetensors` file
//! (`Checkpoint::open` + `tensor_f32` of every tensor). Never a panic; an
//! accepted config is consistent; every tensor of an accepted file either
//! converts to as many values as its shape says or is a dtype error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdmoe_sim::model::{Checkpoint, MixtralConfig, ModelError};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match MixtralConfig::from_json_str(text, std::path::Path::new("config.json")) {
            Ok(c) => {
                assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0);
                assert_eq!(c.head_dim % 2, 0);
                assert!(c.num_experts_per_tok <= c.num_local_experts);
                assert!(c.n_params() > 0);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("wdmoe-fuzz-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), rest).unwrap();
    let Ok(ck) = Checkpoint::open(&dir) else {
        return;
    };
    for name in ck.names() {
        let (shape, dtype) = ck.info(name).unwrap();
        let shape = shape.to_vec();
        match ck.tensor_f32(name, &shape) {
            Ok(v) => {
                assert!(dtype.is_some());
                assert_eq!(v.len(), shape.iter().product::<usize>());
            }
            Err(ModelError::Dtype { .. }) => assert!(dtype.is_none()),
            Err(e) => panic!("{name}: {e}"),
        }
    }
});
