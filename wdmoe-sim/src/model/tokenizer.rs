//! `tokenizer.json` through the `tokenizers` crate (feature `tokenizer`).

use std::path::{Path, PathBuf};

use super::ModelError;

/// A checkpoint's tokenizer (`tokenizer.json`).
pub struct Tokenizer {
    path: PathBuf,
    #[cfg(feature = "tokenizer")]
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `path`; without the `tokenizer` feature, an error that says so.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        #[cfg(feature = "tokenizer")]
        {
            let inner =
                tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            Ok(Tokenizer {
                path: path.to_owned(),
                inner,
            })
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            Err(ModelError::Tokenizer {
                path: path.to_owned(),
                message: "wdmoe-sim was built without the `tokenizer` feature".into(),
            })
        }
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Tokens it knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        #[cfg(feature = "tokenizer")]
        {
            self.inner.get_vocab_size(true)
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            0
        }
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        #[cfg(feature = "tokenizer")]
        {
            Ok(self
                .inner
                .encode(text, true)
                .map_err(|e| self.err(e))?
                .get_ids()
                .to_vec())
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = text;
            Err(self.err("built without the `tokenizer` feature"))
        }
    }

    /// Token ids of `text` without the special tokens the tokenizer's
    /// post-processor would add (no BOS): for scoring, where the caller
    /// places the BOS itself.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        #[cfg(feature = "tokenizer")]
        {
            Ok(self
                .inner
                .encode(text, false)
                .map_err(|e| self.err(e))?
                .get_ids()
                .to_vec())
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = text;
            Err(self.err("built without the `tokenizer` feature"))
        }
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        #[cfg(feature = "tokenizer")]
        {
            self.inner.decode(ids, true).map_err(|e| self.err(e))
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = ids;
            Err(self.err("built without the `tokenizer` feature"))
        }
    }
}
