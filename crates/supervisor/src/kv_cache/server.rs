//! llama.cpp's server API for its KV cache (its README, "/slots"): `GET /props`
//! says which model and build it runs, `GET /slots` what each slot holds, and
//! `POST /slots/{id}?action=save|restore` with `{"filename": …}` writes or reads
//! one slot's cache as a file in its `--slot-save-path`.

use std::time::Duration;

use serde_json::{json, Value};

use super::files::Identity;
use crate::backends::Http;

/// What the server says it runs, less the router's name for it.
pub(crate) struct Props {
    pub model_path: String,
    pub build_info: String,
    pub n_ctx: u64,
    pub total_slots: u32,
}

impl Props {
    pub fn identity(&self, instance: &str) -> Identity {
        Identity {
            instance: instance.to_string(),
            model_path: self.model_path.clone(),
            build_info: self.build_info.clone(),
            n_ctx: self.n_ctx,
        }
    }
}

/// What one save or restore moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    pub tokens: u64,
    pub bytes: u64,
}

pub(crate) struct Server<'a> {
    pub http: &'a Http,
    pub base: &'a str,
    pub api_key: Option<&'a str>,
    /// How long each call may take (the whole save or restore is bounded apart).
    pub limit: Duration,
}

impl Server<'_> {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let a = self
            .http
            .get(&format!("{}{path}", self.base), self.api_key, self.limit)
            .await
            .map_err(|e| e.to_string())?;
        if !a.status.is_success() {
            return Err(format!("{path} answered {}: {}", a.status, a.message()));
        }
        Ok(a.json)
    }

    pub async fn props(&self) -> Result<Props, String> {
        let v = self.get("/props").await?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Props {
            model_path: text("model_path"),
            build_info: text("build_info"),
            n_ctx: v
                .pointer("/default_generation_settings/n_ctx")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            total_slots: v
                .get("total_slots")
                .and_then(Value::as_u64)
                .map_or(1, |n| n as u32),
        })
    }

    /// The slots that hold a conversation: those that served a task with a prompt.
    pub async fn slots_in_use(&self) -> Result<Vec<u32>, String> {
        let v = self.get("/slots").await?;
        let slots = v
            .as_array()
            .ok_or("/slots did not list slots (is the server started with --slots, or too old?)")?;
        Ok(slots
            .iter()
            .filter(|s| {
                let prompt = s.get("n_prompt_tokens").and_then(Value::as_u64);
                let task = s.get("id_task").and_then(Value::as_i64);
                prompt.unwrap_or(0) > 0 || (prompt.is_none() && task.is_some_and(|t| t >= 0))
            })
            .filter_map(|s| s.get("id").and_then(Value::as_u64).map(|id| id as u32))
            .collect())
    }

    async fn action(&self, id: u32, action: &str, file: &str) -> Result<Value, String> {
        let url = format!("{}/slots/{id}?action={action}", self.base);
        let a = self
            .http
            .post(&url, &json!({ "filename": file }), self.api_key, self.limit)
            .await
            .map_err(|e| e.to_string())?;
        if !a.status.is_success() {
            return Err(format!(
                "{action} of slot {id} answered {}: {}",
                a.status,
                a.message()
            ));
        }
        Ok(a.json)
    }

    pub async fn save(&self, id: u32, file: &str) -> Result<Moved, String> {
        let v = self.action(id, "save", file).await?;
        Ok(Moved {
            tokens: number(&v, "n_saved"),
            bytes: number(&v, "n_written"),
        })
    }

    pub async fn restore(&self, id: u32, file: &str) -> Result<Moved, String> {
        let v = self.action(id, "restore", file).await?;
        Ok(Moved {
            tokens: number(&v, "n_restored"),
            bytes: number(&v, "n_read"),
        })
    }
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}
