//! `request_log`: where the record of every model request is kept and for how
//! long, or `off`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::size::ByteSize;
use crate::timeout::span;

/// `request_log: off`, or its settings (the default: on, in the data dir).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestLog {
    Off,
    On(RequestLogSettings),
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog::On(RequestLogSettings::default())
    }
}

impl RequestLog {
    pub fn settings(&self) -> Option<&RequestLogSettings> {
        match self {
            RequestLog::Off => None,
            RequestLog::On(s) => Some(s),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestLogSettings {
    /// The SQLite file. Default: `requests.db` in the user's data dir
    /// (`~/.local/share/modelyard/`, `~/Library/Application Support/modelyard/`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Records older than this are deleted.
    #[serde(default = "keep", with = "span")]
    pub keep: Duration,
    /// The most the records may take; the oldest go first.
    #[serde(default = "max")]
    pub max: ByteSize,
    /// Keep each request's body (bounded): prompts are private, so off by default.
    #[serde(default)]
    pub capture: bool,
}

impl Default for RequestLogSettings {
    fn default() -> Self {
        RequestLogSettings {
            path: None,
            keep: keep(),
            max: max(),
            capture: false,
        }
    }
}

impl RequestLogSettings {
    /// `path`, or the default one; None when the system names no data dir.
    pub fn path_or_default(&self) -> Option<PathBuf> {
        self.path
            .clone()
            .or_else(|| dirs::data_dir().map(|d| d.join("modelyard").join("requests.db")))
    }
}

fn keep() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn max() -> ByteSize {
    ByteSize(100 * 1000 * 1000)
}

struct RequestLogVisitor;

impl<'de> Visitor<'de> for RequestLogVisitor {
    type Value = RequestLog;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`off`, or a map of path, keep, max and capture")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RequestLog, E> {
        match v {
            false => Ok(RequestLog::Off),
            true => Ok(RequestLog::default()),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RequestLog, E> {
        match v.trim() {
            s if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("false") => {
                Ok(RequestLog::Off)
            }
            s if s.eq_ignore_ascii_case("on") || s.eq_ignore_ascii_case("true") => {
                Ok(RequestLog::default())
            }
            _ => Err(E::custom(format!(
                "`{v}` is not a request log setting: write `off`, or a map of path, keep, max and capture"
            ))),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RequestLog, A::Error> {
        RequestLogSettings::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(RequestLog::On)
    }
}

impl<'de> Deserialize<'de> for RequestLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RequestLogVisitor)
    }
}
