//! A problem in the configuration, named by its key, and the list a check collects: every
//! problem is reported at once, not the first one only.

/// A problem in the file, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The problems a check found, in the order it found them.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Records that `key` has a problem.
    pub fn bad(&mut self, key: &str, message: String) {
        self.0.push(ConfigProblem { key: key.into(), message });
    }

    pub fn into_result(self) -> Result<(), Vec<ConfigProblem>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}
