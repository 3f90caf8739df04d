//! Why a pushed snapshot was refused: a metric label, a log reason, and the message. A leaf:
//! the metrics list every label without depending on the push stages.

/// Why a push was refused (metric label and log reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a signed snapshot envelope: {0}")]
    Malformed(String),
    #[error("signed with a key that is not in bindings.trusted_keys")]
    UntrustedKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("snapshot is for gateway {0:?}")]
    OtherGateway(String),
    #[error("snapshot version {got} is not newer than the one accepted before ({have})")]
    NotNewer { got: u64, have: u64 },
    #[error("snapshot version {got} was created {hours} h ago, more than bindings.push_max_age_hours")]
    TooOld { got: u64, hours: i64 },
    #[error("snapshot version {got} gave way to version {by}, waiting to be applied")]
    Superseded { got: u64, by: u64 },
    #[error("snapshot holds invalid bindings: {0}")]
    Invalid(String),
}

impl Refused {
    /// Every label, for metrics that list each reason.
    pub const LABELS: [&'static str; 8] = [
        "malformed",
        "untrusted_key",
        "bad_signature",
        "other_gateway",
        "not_newer",
        "too_old",
        "superseded",
        "invalid",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedKey => "untrusted_key",
            Self::BadSignature => "bad_signature",
            Self::OtherGateway(_) => "other_gateway",
            Self::NotNewer { .. } => "not_newer",
            Self::TooOld { .. } => "too_old",
            Self::Superseded { .. } => "superseded",
            Self::Invalid(_) => "invalid",
        }
    }
}
