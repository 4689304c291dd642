//! The configuration: the Monkey proxy_reverse language, extended (SPEC section 2).
//!
//! Pipeline: file bytes → [`raw`] (pest grammar, one line at a time, located
//! directives) → [`resolve`] (sections merged, defaults copied into entries, every
//! rule checked, regexes compiled) → [`Config`]. Both stages collect every error
//! with its `file:line:col`; parsing takes text, not paths, so tests feed it strings.

mod diagnostic;
mod entry_rules;
mod grammar;
pub mod key;
mod lint;
pub mod model;
pub mod raw;
mod resolve;
pub mod rules;
pub(crate) mod suggest;
mod tls;
mod values;

use std::path::{Path, PathBuf};

pub use diagnostic::{ConfigErrors, Diagnostic, Severity};
pub use model::*;
pub use rules::{HostPattern, ProxyVersion, Rules};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // The cause is in the message (the runtime prints it with `to_string()`), so it
    // is not also a `source()`: `{:#}` would print it twice.
    #[error("cannot read configuration file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

impl Config {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&bytes, path).map_err(LoadError::Invalid)
    }

    /// Parse and validate config text; `path` is used in messages only.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let raw = raw::parse(&name, bytes);
        resolve::resolve(raw, PathBuf::from(path))
    }

    /// Convenience for tests and generated configs.
    pub fn from_text(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text.as_bytes(), Path::new("<text>"))
    }
}
