//! The validation error shared by every crate that checks user input.

/// A field of a request, manifest or parameter set that is out of its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Dotted path of the field, e.g. `style_layers[1].weight`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl InvalidField {
    /// An error for `field` with a reason.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error for a field nested in `parent`: `size` in `params` is `params.size`.
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}
