//! Finding routes.yaml and reading it: the file, then `MODELYARD_*` overrides,
//! then validation. Nothing starts until this returns Ok.

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format};
use figment::Figment;

use crate::env::PREFIX as ENV_PREFIX;
use crate::error::{ConfigError, Issue, Origin};
use crate::locate::LineIndex;
use crate::schema::Config;
use crate::validate::{validate, warnings, Problem};

/// A config that passed validation, and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// Shown in messages: a path, or a name for an embedded config.
    pub origin: String,
    pub path: Option<PathBuf>,
    /// What the config allows but is most likely not meant (no models at all),
    /// for `check` and the log to show; never a reason to refuse it.
    pub warnings: Vec<Issue>,
    lines: std::sync::Arc<LineIndex>,
}

impl Loaded {
    /// An issue about `path` found after loading (a program missing, a budget past
    /// the machine's memory), placed on its line or environment variable as the
    /// loader's own are.
    pub fn issue(&self, path: &[&str], message: String) -> Issue {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        Issue {
            origin: origin_of(&path, &self.lines),
            key: path.join("."),
            message,
        }
    }
}

/// The file to read: `explicit` if given, else `./routes.yaml`, else the user's
/// config dir (`~/.config/modelyard/routes.yaml` on Linux,
/// `~/Library/Application Support/modelyard/routes.yaml` on macOS).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut searched = vec![PathBuf::from("routes.yaml")];
    if let Some(dir) = dirs::config_dir() {
        searched.push(dir.join("modelyard").join("routes.yaml"));
    }
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(ConfigError::NotFound { searched })
}

pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = read_bounded(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = load_str(&path.display().to_string(), &text)?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// The most a config file (routes.yaml, api_keys_file) may hold: hundreds of
/// times a real one, and what keeps `/dev/zero` from growing the router.
pub const MAX_FILE: u64 = 1 << 20;

/// A config file's text: a regular file (a FIFO would block the reader for
/// ever, a device never end) of at most [`MAX_FILE`] bytes.
pub fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory cannot be a config file)",
        ));
    }
    let too_large = || {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "larger than {} KiB, the most a config file may be",
                MAX_FILE >> 10
            ),
        )
    };
    if meta.len() > MAX_FILE {
        return Err(too_large());
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    Ok(text)
}

/// Reads a config from text (an embedded one, or a file already read).
pub fn load_str(origin: &str, text: &str) -> Result<Loaded, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        file: origin.to_string(),
        issues,
    };
    let index = LineIndex::parse(text).map_err(|e| {
        let e = crate::syntax::explain(text, e);
        invalid(vec![Issue {
            key: format!("column {}", e.col),
            origin: Some(Origin::Line(e.line)),
            message: format!("not valid YAML: {}", e.message),
        }])
    })?;
    let mut issues: Vec<Issue> = index
        .duplicates
        .iter()
        .map(|(path, line, first)| Issue {
            key: path.join("."),
            origin: Some(Origin::Line(*line)),
            message: format!("defined twice (first on line {first}); names must be unique"),
        })
        .collect();

    let figment = Figment::from(crate::yaml::Yaml::string(text)).merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| crate::env::is_config_key(k.as_str()))
            .split("__"),
    );
    let mut config: Config = match figment.extract() {
        Ok(c) => c,
        Err(errors) => {
            issues.extend(errors.into_iter().map(|e| from_figment(e, &index)));
            return Err(invalid(issues));
        }
    };
    let mut problems = validate(&config);
    problems.extend(
        crate::size::unitless_memory(&figment)
            .into_iter()
            .map(|(path, message)| Problem { path, message }),
    );
    match crate::keys::client_keys(&config) {
        Ok(keys) => config.client_keys = keys,
        Err(p) => problems.push(p),
    }
    issues.extend(problems.into_iter().map(|p| issue_of(p, &index)));
    // In file order, so the list reads top to bottom like the file.
    issues.sort_by_key(|i| match &i.origin {
        Some(Origin::Line(l)) => (0, *l),
        _ => (1, 0),
    });
    if issues.is_empty() {
        let mut warnings: Vec<Issue> = warnings(&config)
            .into_iter()
            .map(|p| issue_of(p, &index))
            .collect();
        warnings.extend(
            crate::env::near_misses()
                .into_iter()
                .map(|(var, key, meant)| Issue {
                    key,
                    origin: Some(Origin::Env(var)),
                    message: format!("not a routes.yaml key, so ignored; did you mean {meant}?"),
                }),
        );
        Ok(Loaded {
            config,
            origin: origin.to_string(),
            path: None,
            warnings,
            lines: std::sync::Arc::new(index),
        })
    } else {
        Err(invalid(issues))
    }
}

fn issue_of(Problem { path, message }: Problem, index: &LineIndex) -> Issue {
    Issue {
        origin: origin_of(&path, index),
        key: path.join("."),
        message,
    }
}

/// The environment variable that set `path` (or the table it is in) when the file
/// does not have it; else the file line.
fn origin_of(path: &[String], index: &LineIndex) -> Option<Origin> {
    for n in (1..=path.len()).rev() {
        let var = env_var_for(&path[..n]);
        if std::env::var_os(&var).is_some() {
            return Some(Origin::Env(var));
        }
        let nested = format!("{var}__");
        if index.exact(&path[..n]).is_none() {
            if let Some((found, _)) =
                std::env::vars_os().find(|(k, _)| k.to_string_lossy().starts_with(&nested))
            {
                return Some(Origin::Env(found.to_string_lossy().into_owned()));
            }
        }
    }
    index.line_of(path).map(Origin::Line)
}

fn env_var_for(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_uppercase())
}

fn from_figment(e: figment::Error, index: &LineIndex) -> Issue {
    let mut path = e.path.clone();
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // figment already ends the path with the key for key errors.
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            let hint = crate::closest(field, expected.iter().copied())
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            format!(
                "unknown key; {hint}expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => {
            path.push(field.to_string());
            "missing (required)".to_string()
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value `{v}`; expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        other => other.to_string(),
    };
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let origin = if from_env {
        Some(Origin::Env(env_var_for(&path)))
    } else {
        index.line_of(&path).map(Origin::Line)
    };
    Issue {
        key: if path.is_empty() {
            "(top level)".into()
        } else {
            path.join(".")
        },
        origin,
        message,
    }
}
