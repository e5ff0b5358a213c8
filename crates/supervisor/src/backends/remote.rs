//! Another machine's OpenAI-compatible server, or another modelyard: no process
//! and no memory of ours, only a health check, so requests fail fast and say why
//! while it is unreachable.

use super::Adapter;

pub(crate) struct Remote;

impl Adapter for Remote {}
