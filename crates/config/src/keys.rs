//! Client keys: written in routes.yaml, in the environment (MODELYARD_API_KEYS,
//! as `[k1, k2]`), or in a file of their own (`api_keys_file`), so a config file
//! that is shared or committed need hold none.

use crate::schema::Config;
use crate::validate::Problem;

pub(crate) fn client_keys(config: &Config) -> Result<Vec<String>, Problem> {
    let mut keys = Vec::new();
    for (i, k) in config.api_keys.iter().enumerate() {
        check(k).map_err(|why| Problem {
            path: vec!["api_keys".into(), i.to_string()],
            message: why.into(),
        })?;
        keys.push(k.clone());
    }
    if let Some(path) = &config.api_keys_file {
        let problem = |message: String| Problem {
            path: vec!["api_keys_file".into()],
            message,
        };
        let text = crate::load::read_bounded(path)
            .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        for (n, line) in text.lines().enumerate() {
            let key = line.split('#').next().unwrap_or("").trim();
            if key.is_empty() {
                continue;
            }
            // Never echo the key itself: the message may reach a log.
            check(key)
                .map_err(|why| problem(format!("{} line {}: {why}", path.display(), n + 1)))?;
            keys.push(key.to_string());
        }
    }
    Ok(keys)
}

fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("a key cannot be empty")
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("a key cannot contain spaces or control characters")
    } else {
        Ok(())
    }
}
