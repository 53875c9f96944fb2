//! Typed errors of the library. Every message names the file, flag or tensor at fault and, where one exists,
//! the fix. Errors keep their cause as a `source`; [`Error::one_line`] prints the whole chain as one line (what
//! the binary shows), [`Error::report`] the chain with any backtrace (`-v`, `RUST_BACKTRACE`).

use std::path::PathBuf;

/// A cause kept behind one of our errors.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value that can never work (out of range, not a multiple of the latent grid, ...).
    #[error("{0}")]
    Usage(String),
    /// An image file (the input, a mask, a reference or control image) is missing, unreadable or not an image.
    #[error("{role} {}: {msg}", path.display())]
    Image {
        role: crate::image_io::Role,
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Source>,
    },
    /// A model folder, component, config or weight file is missing or unreadable.
    #[error("model {}: {msg}", path.display())]
    Model {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Source>,
    },
    /// A `--lora` file that is unreadable, for another model, or shaped differently from the model's layers.
    #[error("LoRA {}: {msg}", path.display())]
    Lora {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Source>,
    },
    /// Tensors the config requires are absent from, or shaped differently in, the weight files.
    #[error("{component} weights do not fit its config.json{}: {detail}", file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default())]
    Tensors { component: String, detail: String, file: Option<PathBuf> },
    /// The output cannot be written where asked.
    #[error("output {}: {msg}", path.display())]
    Output {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Source>,
    },
    /// The caller's [`Progress`](crate::engine::Progress) asked the edit to stop between steps.
    #[error("cancelled")]
    Cancelled,
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Source>,
    },
    /// A stage produced NaN or infinite values: the image would be black or noise, so nothing is written.
    #[error("{stage} produced NaN or infinite values; {cause}. No image was written")]
    NonFinite { stage: String, cause: String },
    /// A tensor operation failed (out of memory, a CUDA driver error, ...).
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into(), source: None }
    }

    pub(crate) fn model_from(path: impl Into<PathBuf>, msg: impl Into<String>, e: impl Into<Source>) -> Self {
        Error::Model { path: path.into(), msg: msg.into(), source: Some(e.into()) }
    }

    pub(crate) fn lora(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Lora { path: path.into(), msg: msg.into(), source: None }
    }

    pub(crate) fn lora_from(path: impl Into<PathBuf>, msg: impl Into<String>, e: impl Into<Source>) -> Self {
        Error::Lora { path: path.into(), msg: msg.into(), source: Some(e.into()) }
    }

    /// A model-file error met while fetching a LoRA, told as the LoRA's.
    pub(crate) fn into_lora(self) -> Self {
        match self {
            Error::Model { path, msg, source } => Error::Lora { path, msg, source },
            other => other,
        }
    }

    pub(crate) fn image(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::image_as(crate::image_io::Role::Input, path, msg)
    }

    pub(crate) fn image_from(path: impl Into<PathBuf>, msg: impl Into<String>, e: impl Into<Source>) -> Self {
        Self::image_from_as(crate::image_io::Role::Input, path, msg, e)
    }

    pub(crate) fn image_as(role: crate::image_io::Role, path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Image { role, path: path.into(), msg: msg.into(), source: None }
    }

    pub(crate) fn image_from_as(
        role: crate::image_io::Role,
        path: impl Into<PathBuf>,
        msg: impl Into<String>,
        e: impl Into<Source>,
    ) -> Self {
        Error::Image { role, path: path.into(), msg: msg.into(), source: Some(e.into()) }
    }

    pub(crate) fn output(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Output { path: path.into(), msg: msg.into(), source: None }
    }

    pub(crate) fn output_from(path: impl Into<PathBuf>, msg: impl Into<String>, e: impl Into<Source>) -> Self {
        Error::Output { path: path.into(), msg: msg.into(), source: Some(e.into()) }
    }

    pub(crate) fn tokenizer_from(path: impl Into<PathBuf>, msg: impl Into<String>, e: impl Into<Source>) -> Self {
        Error::Tokenizer { path: path.into(), msg: msg.into(), source: Some(e.into()) }
    }

    /// Whether the problem hits every item of a batch (the model itself) rather than one input.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Model { .. } | Error::Lora { .. } | Error::Tensors { .. } | Error::Tokenizer { .. })
    }

    /// The message and its causes on one line, `a: b: c`, without backtraces.
    pub fn one_line(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = match c.downcast_ref::<candle_core::Error>() {
                Some(ce) => candle_message(ce),
                None => first_paragraph(&c.to_string()),
            };
            if !text.is_empty() && !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }

    /// Every cause on its own line, as each describes itself (backtraces included): for `-v` and
    /// RUST_BACKTRACE=1. A cause whose text the line above already holds (HTTP clients wrap the same DNS message
    /// at every layer) is not repeated.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut shown = out.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !shown.contains(text.trim()) {
                out.push_str(&format!("\n  caused by: {text}"));
                shown = text;
            }
            cause = c.source();
        }
        if let Error::Candle(candle_core::Error::WithBacktrace { backtrace, .. }) = self {
            out.push_str(&format!("\n{backtrace}"));
        }
        out
    }
}

/// A candle error on one line: backtraces dropped, context and paths joined with `: `.
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        E::WrappedContext { wrapped, context } => format!("{context}: {}", first_paragraph(&wrapped.to_string())),
        other => first_paragraph(&other.to_string()),
    }
}

/// Text up to the first line that looks like a backtrace frame, its lines joined by `; `.
fn first_paragraph(text: &str) -> String {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    text.lines()
        .map(str::trim)
        .take_while(|l| !is_frame(l) && !l.starts_with("stack backtrace"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_with_backtraces_print_as_one_line() {
        let bt = std::backtrace::Backtrace::force_capture();
        let inner =
            candle_core::Error::Msg("DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device ordinal\")".into());
        let e: Error = candle_core::Error::WithBacktrace { inner: Box::new(inner), backtrace: Box::new(bt) }
            .context("cannot open cuda:3")
            .into();
        let line = e.one_line();
        assert_eq!(line, "cannot open cuda:3: DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device ordinal\")");
        assert!(!line.contains('\n'));
        assert!(e.report().lines().count() > 1, "the report keeps the backtrace");
    }

    #[test]
    fn causes_are_chained() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = Error::image_from("cat.png", "cannot read", io);
        assert_eq!(e.one_line(), "input image cat.png: cannot read: No such file or directory (os error 2)");
    }

    /// A layer of an HTTP client's error chain: its message, then the layer below's.
    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn the_report_says_a_repeated_cause_once() {
        let dns = "failed to lookup address information: Name or service not known";
        let inner = Layer(dns.into(), None);
        let mid = Layer(format!("https://hf.co/api: Dns Failed: {dns}"), Some(Box::new(inner)));
        let top = Layer(format!("request error: https://hf.co/api: Dns Failed: {dns}"), Some(Box::new(mid)));
        let e =
            Error::Model { path: "schnell".into(), msg: "cannot reach the Hub".into(), source: Some(Box::new(top)) };
        let report = e.report();
        assert_eq!(report.matches(dns).count(), 1, "{report}");
        assert_eq!(report.lines().count(), 2, "{report}");
        assert_eq!(e.one_line().matches(dns).count(), 1);
    }

    #[test]
    fn frames_are_cut() {
        let text = "invalid device ordinal\n   0: <unknown>\n   1: <unknown>\n  at src/main.rs:3";
        assert_eq!(first_paragraph(text), "invalid device ordinal");
        assert_eq!(first_paragraph("a\nb"), "a; b");
    }
}
