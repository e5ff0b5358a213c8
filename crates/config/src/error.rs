use std::fmt;
use std::path::PathBuf;

/// Where a setting came from, so the user knows what to edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Line(usize),
    Env(String),
}

/// One thing wrong with a config: the key, where it stands, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, e.g. `models.qwen3-32b.memory`.
    pub key: String,
    pub origin: Option<Origin>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file found (looked in: {}); pass --config PATH or create routes.yaml", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound { searched: Vec<PathBuf> },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Invalid { file, issues })]
    Invalid { file: String, issues: Vec<Issue> },
}

struct Invalid<'a> {
    file: &'a str,
    issues: &'a [Issue],
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "{} is not valid ({n} error{}):",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in self.issues {
            write!(f, "\n  {}", issue.located(self.file))?;
        }
        Ok(())
    }
}

impl Issue {
    /// `FILE:LINE: key.path: message`, or `environment VAR: …` when a variable set it.
    pub fn located<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        Located { issue: self, file }
    }
}

struct Located<'a> {
    issue: &'a Issue,
    file: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.issue.origin {
            Some(Origin::Line(l)) => write!(f, "{}:{l}: ", self.file)?,
            Some(Origin::Env(var)) => write!(f, "environment {var}: ")?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{}: {}", self.issue.key, self.issue.message)
    }
}
