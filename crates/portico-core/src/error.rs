//! The one error type of the domain: a value that could not be parsed, with what to fix.

/// A domain rule was broken. The message says what is wrong and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value failed validation; `field` names it, `message` says what to fix.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid { field, message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
