//! Which `MODELYARD_*` environment variables set config keys: those named after a
//! top-level key of routes.yaml (`MODELYARD_BUDGET`, `MODELYARD_MODELS__X__MEMORY`).
//! Every other one (the CLI's MODELYARD_URL, the log filter, a test suite's own) is
//! someone else's and left alone, never a reason to refuse the config.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::schema::Config;

pub(crate) const PREFIX: &str = "MODELYARD_";

/// Whether the variable named `key` (prefix removed, any case) sets a config key.
pub(crate) fn is_config_key(key: &str) -> bool {
    let top = key.split("__").next().unwrap_or_default();
    top_level_keys().iter().any(|k| k.eq_ignore_ascii_case(top))
}

/// `MODELYARD_*` variables that set nothing but are one typo from a key (as
/// `MODELYARD_BUGDET`): the variable, the key it names, and the variable it most
/// likely meant.
pub(crate) fn near_misses() -> Vec<(String, String, String)> {
    std::env::vars_os()
        .filter_map(|(k, _)| {
            let name = k.into_string().ok()?;
            let key = name.strip_prefix(PREFIX)?;
            if is_config_key(key) {
                return None;
            }
            let top = key.split("__").next().unwrap_or_default();
            let meant = crate::closest(top, top_level_keys().iter().copied())?;
            let meant = format!("{PREFIX}{}", meant.to_uppercase());
            Some((name.clone(), top.to_lowercase(), meant))
        })
        .collect()
}

/// The top-level keys, read from the schema itself so the two cannot drift.
fn top_level_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut probe = FieldsOf(&[]);
        let _ = Config::deserialize(&mut probe);
        probe.0
    })
}

/// A deserializer that only notes the field names a struct asks for.
struct FieldsOf(&'static [&'static str]);

impl<'de> Deserializer<'de> for &mut FieldsOf {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only the field names are wanted"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        self.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_are_the_schemas() {
        let keys = top_level_keys();
        for k in [
            "listen",
            "budget",
            "idle_timeout",
            "backends",
            "models",
            "api_keys",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        assert!(!keys.contains(&"client_keys"), "a skipped field is no key");
    }

    #[test]
    fn only_variables_named_after_keys_set_them() {
        assert!(is_config_key("BUDGET"));
        assert!(is_config_key("budget"));
        assert!(is_config_key("MODELS__QWEN__MEMORY"));
        for other in [
            "URL",
            "TEST_PYTHON",
            "LOG",
            "CONFIG",
            "MEMINFO",
            "BUDGETS",
            "",
        ] {
            assert!(!is_config_key(other), "{other}");
        }
    }
}
