//! Safetensors checkpoints in the Hugging Face hub layout: `model.safetensors`
//! or `model.safetensors.index.json` with shards, memory-mapped (nothing is
//! read whole). [`Checkpoint::weight`] leaves f16/bf16 tensors in the map
//! (converted to f32 per product, see [`WeightMatrix`]); f32 tensors and
//! [`Checkpoint::tensor_f32`] are converted to owned f32 vectors.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use serde::Deserialize;

use super::ModelError;
use crate::layer::{HalfDtype, WeightMatrix};

/// Storage type of a tensor in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl StoredDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::Bf16 => 2,
        }
    }

    fn to_safetensors(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::Bf16 => Dtype::BF16,
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
    data_start: usize,
    metadata: Metadata,
}

/// A checkpoint directory's safetensors files, memory-mapped.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    where_is: HashMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.where_is.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

fn open_shard(path: &Path) -> Result<Shard, ModelError> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only; a checkpoint is not modified while it is
    // loaded (the same contract as every safetensors loader that maps files).
    let mmap = unsafe { Mmap::map(&file) }.map_err(io(path))?;
    let (n, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Shard {
        path: path.to_owned(),
        mmap: Arc::new(mmap),
        data_start: 8 + n,
        metadata,
    })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` and its shards when the
    /// index exists, else `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut shards = Vec::new();
        let mut where_is = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let index: Index = serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: index_path.clone(),
                message: e.to_string(),
            })?;
            let mut files: Vec<&String> = index.weight_map.values().collect();
            files.sort();
            files.dedup();
            let mut shard_of = HashMap::new();
            for f in files {
                if f.contains("..") || Path::new(f).is_absolute() {
                    return Err(ModelError::Json {
                        path: index_path.clone(),
                        message: format!("shard file name {f:?} leaves the checkpoint directory"),
                    });
                }
                shard_of.insert(f.clone(), shards.len());
                shards.push(open_shard(&dir.join(f))?);
            }
            for (name, f) in &index.weight_map {
                let s = shard_of[f];
                if shards[s].metadata.info(name).is_none() {
                    return Err(ModelError::MissingTensor {
                        name: name.clone(),
                        path: shards[s].path.clone(),
                    });
                }
                where_is.insert(name.clone(), s);
            }
        } else {
            let path = dir.join("model.safetensors");
            let shard = open_shard(&path)?;
            for name in shard.metadata.tensors().keys() {
                where_is.insert(name.clone(), 0);
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            dir: dir.to_owned(),
            shards,
            where_is,
        })
    }

    /// Number of safetensors files.
    pub fn n_files(&self) -> usize {
        self.shards.len()
    }

    /// `true` when the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.where_is.contains_key(name)
    }

    /// Names of every tensor, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.where_is.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Shape and storage dtype of tensor `name` (`None` for a dtype other
    /// than F32, F16, BF16: [`Checkpoint::tensor_f32`] says which).
    pub fn info(&self, name: &str) -> Option<(&[usize], Option<StoredDtype>)> {
        let info = self.shards[*self.where_is.get(name)?].metadata.info(name)?;
        let dtype = match info.dtype {
            Dtype::F32 => Some(StoredDtype::F32),
            Dtype::F16 => Some(StoredDtype::F16),
            Dtype::BF16 => Some(StoredDtype::Bf16),
            _ => None,
        };
        Some((&info.shape, dtype))
    }

    /// Bytes of tensor data in all files.
    pub fn data_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.mmap.len() - s.data_start)
            .sum()
    }

    /// Shard and metadata of tensor `name`, after checking its shape and
    /// that its bytes lie in the file; returns them with the byte range.
    fn locate(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(&Shard, &TensorInfo, std::ops::Range<usize>), ModelError> {
        let Some(&s) = self.where_is.get(name) else {
            return Err(ModelError::MissingTensor {
                name: name.into(),
                path: self.dir.clone(),
            });
        };
        let shard = &self.shards[s];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                path: shard.path.clone(),
            })?;
        if info.shape != shape {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let range = shard.data_start + a..shard.data_start + b;
        if range.end > shard.mmap.len() || a > b {
            return Err(ModelError::Safetensors {
                path: shard.path.clone(),
                message: format!(
                    "tensor `{name}`: bytes {range:?} lie outside the file ({} bytes)",
                    shard.mmap.len()
                ),
            });
        }
        Ok((shard, info, range))
    }

    /// Tensor `name` as a product weight, after checking that its shape is
    /// `shape` and its dtype F32, F16 or BF16: f16/bf16 values stay in the
    /// memory map (no RAM of their own), f32 values are copied to RAM.
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<WeightMatrix, ModelError> {
        let (shard, info, range) = self.locate(name, shape)?;
        let dtype = match info.dtype {
            Dtype::F16 => HalfDtype::F16,
            Dtype::BF16 => HalfDtype::Bf16,
            _ => return self.tensor_f32(name, shape).map(WeightMatrix::from),
        };
        let len = range.len() / 2;
        WeightMatrix::mapped(Arc::clone(&shard.mmap), range.start, len, dtype).ok_or_else(|| {
            ModelError::Safetensors {
                path: shard.path.clone(),
                message: format!("tensor `{name}` does not fit in the file"),
            }
        })
    }

    /// Tensor `name` converted to f32 (row-major), after checking that its
    /// shape is `shape` and its dtype F32, F16 or BF16.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (shard, info, range) = self.locate(name, shape)?;
        let bytes = &shard.mmap[range];
        Ok(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    name: name.into(),
                    found: format!("{other:?}"),
                })
            }
        })
    }
}

/// One tensor to write: name, shape, f32 values and the storage dtype.
#[derive(Debug, Clone)]
pub struct TensorToWrite {
    /// The tensor name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Row-major values (rounded to the storage dtype on writing).
    pub values: Vec<f32>,
    /// Storage dtype.
    pub dtype: StoredDtype,
}

struct View<'a>(&'a [usize], Dtype, Vec<u8>);

impl safetensors::View for View<'_> {
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

/// Writes tensors to a safetensors file at `path` (for synthetic checkpoints
/// and tests).
pub fn write_safetensors(path: &Path, tensors: &[TensorToWrite]) -> Result<(), ModelError> {
    let views = tensors.iter().map(|t| {
        let bytes: Vec<u8> = match t.dtype {
            StoredDtype::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::F16 => t
                .values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            StoredDtype::Bf16 => t
                .values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        (
            t.name.as_str(),
            View(&t.shape, t.dtype.to_safetensors(), bytes),
        )
    });
    let data = safetensors::serialize(views, None).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, data).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::super::synth::{self, Layout};
    use super::super::Model;
    use super::*;

    #[test]
    fn half_matrices_stay_mapped_and_f32_ones_are_owned() {
        for dtype in [StoredDtype::Bf16, StoredDtype::F16, StoredDtype::F32] {
            let dir = std::env::temp_dir().join(format!("wdmoe-ck-mapped-{dtype:?}"));
            let layout = Layout { dtype, shards: 2 };
            synth::write_checkpoint(&dir, &synth::tiny_config(), layout, 4).unwrap();
            let model = Model::load(&dir).unwrap();
            let l = model.layer(1).unwrap();
            let mats = [
                &l.q,
                &l.k,
                &l.v,
                &l.o,
                &l.moe.experts[3].w1,
                &l.moe.experts[0].w2,
            ];
            let half = dtype != StoredDtype::F32;
            assert!(mats.iter().all(|w| w.is_mapped() == half), "{dtype:?}");
            let owned: usize = mats.iter().map(|w| w.owned_bytes()).sum();
            assert_eq!(owned == 0, half, "{dtype:?}: {owned} bytes owned");
            // The mapped values are the stored ones.
            let ck = Checkpoint::open(&dir).unwrap();
            let (shape, _) = ck.info("model.layers.1.self_attn.q_proj.weight").unwrap();
            let shape = shape.to_vec();
            let want = ck
                .tensor_f32("model.layers.1.self_attn.q_proj.weight", &shape)
                .unwrap();
            assert_eq!(l.q.to_f32_vec(), want);
        }
    }
}
