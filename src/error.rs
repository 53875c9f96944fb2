//! Typed errors of the library. Every message names the file, flag or tensor at fault and, where one exists,
//! the fix; the binary prints them as one line and exits with code 2.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value that can never work (out of range, not a multiple of the latent grid, ...).
    #[error("{0}")]
    Usage(String),
    /// The input image is missing, unreadable or not an image.
    #[error("input image {}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },
    /// A model folder, component, config or weight file is missing or unreadable.
    #[error("model {}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    /// Tensors the config requires are absent from, or shaped differently in, the weight files.
    #[error("{component} weights do not fit its config.json: {detail}")]
    Tensors { component: String, detail: String },
    /// The output cannot be written where asked.
    #[error("output {}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }
}
