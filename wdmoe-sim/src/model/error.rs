//! The model's one error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong loading or running a model. Every variant
/// names the file, tensor or key at fault.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be opened, mapped or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON file (config.json, the shard index) is not valid or lacks a key.
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A config key has a value the model cannot use.
    Config {
        /// The config key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// `model_type` is not `"mixtral"`.
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
    },
    /// A safetensors file whose header cannot be parsed.
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A tensor the model needs is in no shard.
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A tensor has another shape than the config implies.
    Shape {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype other than F32, F16 or BF16.
    Dtype {
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        found: String,
    },
    /// The tokenizer could not be loaded or could not encode / decode.
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizer library said.
        message: String,
    },
    /// The tokenizer's vocabulary does not fit the model's.
    VocabMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// Tokens the tokenizer knows.
        tokenizer_vocab: usize,
        /// `vocab_size` of config.json.
        config_vocab: usize,
    },
    /// A token id outside `0..vocab_size`.
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The sequence would exceed `max_position_embeddings`.
    TooLong {
        /// Positions the sequence would need.
        positions: usize,
        /// `max_position_embeddings`.
        max_positions: usize,
    },
    /// An empty token list where at least one token is needed.
    EmptyInput,
    /// The MoE layer executor or the policy rejected a step.
    Layer {
        /// The decoder layer.
        layer: usize,
        /// The executor's error.
        source: crate::layer::LayerError,
    },
    /// Invalid run settings (policy parameters, latencies, sampling).
    Settings(String),
    /// The wireless latency simulation (scenario, channel) failed.
    Latency(String),
    /// Non-finite values in the model's output.
    NonFinite {
        /// Where they appeared.
        what: String,
    },
    /// The whole model on the GPU failed (wdmoe-cuda's error, code kept).
    #[cfg(feature = "cuda")]
    Gpu(wdmoe_cuda::Error),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ModelError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            Json { path, message } => write!(f, "{}: {message}", path.display()),
            Config { key, message } => write!(f, "config.json key `{key}`: {message}"),
            UnknownArchitecture { path, model_type } => write!(
                f,
                "{}: unknown architecture: model_type = {model_type:?}, only \"mixtral\" is supported",
                path.display()
            ),
            Safetensors { path, message } => {
                write!(f, "{}: bad safetensors file: {message}", path.display())
            }
            MissingTensor { name, path } => {
                write!(f, "missing tensor `{name}` (looked in {})", path.display())
            }
            Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, the config implies {expected:?}"
            ),
            Dtype { name, found } => write!(
                f,
                "tensor `{name}` has dtype {found}, only F32, F16 and BF16 are supported"
            ),
            Tokenizer { path, message } => write!(f, "{}: tokenizer: {message}", path.display()),
            VocabMismatch {
                path,
                tokenizer_vocab,
                config_vocab,
            } => write!(
                f,
                "{}: tokenizer has {tokenizer_vocab} tokens, more than config.json's vocab_size = {config_vocab}",
                path.display()
            ),
            TokenOutOfRange { id, vocab_size } => {
                write!(f, "token id {id} is out of range (vocab_size = {vocab_size})")
            }
            TooLong {
                positions,
                max_positions,
            } => write!(
                f,
                "sequence of {positions} tokens is longer than max_position_embeddings = {max_positions}"
            ),
            EmptyInput => write!(f, "empty token list"),
            Layer { layer, source } => write!(f, "decoder layer {layer}: {source}"),
            Settings(s) => write!(f, "invalid settings: {s}"),
            Latency(s) => write!(f, "latency simulation: {s}"),
            NonFinite { what } => write!(f, "non-finite values in {what}"),
            #[cfg(feature = "cuda")]
            Gpu(e) => write!(f, "GPU: {e}"),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Io { source, .. } => Some(source),
            ModelError::Layer { source, .. } => Some(source),
            #[cfg(feature = "cuda")]
            ModelError::Gpu(e) => Some(e),
            _ => None,
        }
    }
}
