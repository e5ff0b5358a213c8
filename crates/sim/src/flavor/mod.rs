//! The API dialects beyond plain OpenAI, each standing in for one real
//! backend (facts in BACKENDS.md) so the router's adapters can be tested
//! against something that behaves like it.

pub mod apfel;
mod clock;
mod keep_alive;
pub mod ollama;
mod ollama_native;
pub mod omlx;
mod pool;

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde_json::Value;

use crate::args::{Args, Flavor};
use crate::response::{json_response, ResponseBody};
use crate::state::SimState;

/// A flavor's own configuration and moving parts.
#[derive(Debug)]
pub enum FlavorState {
    Openai,
    Ollama(ollama::Ollama),
    Omlx(omlx::Omlx),
    Apfel(apfel::Apfel),
}

impl FlavorState {
    /// Reads the flavor's flags and its backend's environment variables;
    /// a bad variable is a startup error so a misconfigured router test
    /// fails loudly instead of silently running with defaults.
    pub fn new(args: &Args) -> Result<Self, String> {
        Ok(match args.flavor {
            Flavor::Openai => Self::Openai,
            Flavor::Ollama => Self::Ollama(ollama::Ollama::new(args)?),
            Flavor::Omlx => Self::Omlx(omlx::Omlx::new(args)?),
            Flavor::Apfel => Self::Apfel(apfel::Apfel::new(args)),
        })
    }

    /// Multi-model flavors are ready at once and load models on demand.
    pub fn loads_models_on_demand(&self) -> bool {
        matches!(self, Self::Ollama(_) | Self::Omlx(_))
    }

    /// The models `/sim/stats` reports load and unload counters for.
    fn pool(&self) -> Option<&Arc<pool::Pool>> {
        match self {
            Self::Ollama(o) => Some(&o.pool),
            Self::Omlx(o) => Some(&o.pool),
            Self::Openai | Self::Apfel(_) => None,
        }
    }
}

/// Where to listen: `--port` when given and not 0, else the backend's own
/// variable, else what the backend itself would do.
pub fn listen_address(args: &Args) -> Result<(String, u16), String> {
    let explicit = args.port.filter(|&p| p != 0);
    let host = args.host.clone();
    if let Some(port) = explicit {
        return Ok((host, port));
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let port_var = |name: &str| -> Result<Option<u16>, String> {
        env(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a port number"))
            })
            .transpose()
    };
    Ok(match args.flavor {
        Flavor::Openai => (host, 0),
        Flavor::Ollama => match env("OLLAMA_HOST") {
            Some(value) => parse_ollama_host(&value, &host)?,
            None => (host, 0),
        },
        Flavor::Omlx => (host, port_var("OMLX_PORT")?.unwrap_or(0)),
        // The real apfel's default; an explicit 0 still means any free port.
        Flavor::Apfel => match (port_var("APFEL_PORT")?, args.port) {
            (Some(port), _) => (host, port),
            (None, Some(0)) => (host, 0),
            (None, _) => (host, 11434),
        },
    })
}

/// `127.0.0.1:PORT`, `http://127.0.0.1:PORT`, `:PORT` or a bare host.
fn parse_ollama_host(value: &str, default_host: &str) -> Result<(String, u16), String> {
    let rest = value.trim();
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))
        .unwrap_or(rest)
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse()
                .map_err(|_| format!("OLLAMA_HOST={value:?} has no valid port"))?;
            (host, port)
        }
        None => (rest, 11434),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { default_host } else { host };
    Ok((host.to_owned(), port))
}

/// `--model NAME=SIZE` for multi-model flavors; SIZE defaults to --memory.
pub fn declared_models(args: &Args) -> Result<Vec<(String, u64)>, String> {
    let mut models: Vec<(String, u64)> = Vec::new();
    for spec in &args.models {
        let (name, size) = match spec.split_once('=') {
            Some((name, size)) => (name, crate::parse_byte_size(size)?),
            None => (spec.as_str(), args.memory.unwrap_or(0)),
        };
        if name.is_empty() {
            return Err(format!("--model {spec:?} has no name"));
        }
        if models.iter().any(|(n, _)| n == name) {
            return Err(format!("--model {name:?} given twice"));
        }
        models.push((name.to_owned(), size));
    }
    Ok(models)
}

/// `/sim/*`, the same in every flavor; multi-model flavors add per-model
/// load and unload counters to the stats.
pub fn sim_route(state: &SimState, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    match (method, path) {
        (&Method::GET, "/sim/stats") => {
            let mut stats = state.stats.snapshot();
            if let (Some(pool), Value::Object(map)) = (state.flavor.pool(), &mut stats) {
                if let Value::Object(extra) = pool.stats() {
                    map.extend(extra);
                }
            }
            Some(json_response(StatusCode::OK, &stats))
        }
        (&Method::GET, "/sim/last-request") => {
            Some(json_response(StatusCode::OK, &state.stats.last_request()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn ollama_host_forms() {
        let parse = |v| parse_ollama_host(v, "127.0.0.1").unwrap();
        assert_eq!(parse("127.0.0.1:5000"), ("127.0.0.1".into(), 5000));
        assert_eq!(parse("http://127.0.0.1:5001/"), ("127.0.0.1".into(), 5001));
        assert_eq!(parse(":5002"), ("127.0.0.1".into(), 5002));
        assert_eq!(parse("[::1]:5003"), ("::1".into(), 5003));
        assert_eq!(parse("0.0.0.0"), ("0.0.0.0".into(), 11434));
        assert!(parse_ollama_host("h:x", "h").is_err());
    }

    #[test]
    fn model_declarations() {
        let args = Args::parse_from([
            "sim",
            "--memory",
            "1KiB",
            "--model",
            "qwen3:8b=2MiB",
            "--model",
            "tiny",
        ]);
        assert_eq!(
            declared_models(&args).unwrap(),
            vec![("qwen3:8b".into(), 2 << 20), ("tiny".into(), 1024)]
        );
        let twice = Args::parse_from(["sim", "--model", "a", "--model", "a=1"]);
        assert!(declared_models(&twice).is_err());
        let bad = Args::parse_from(["sim", "--model", "a=lots"]);
        assert!(declared_models(&bad).is_err());
    }
}
