//! Argument lists (`command`, `args`) as users write them in YAML: `-c, 4096` and
//! `--flash-attn, true` are numbers and booleans to YAML but words to the program,
//! so they are taken as their text. A command written as one string is refused
//! with the list it most likely means, since splitting it ourselves would guess
//! at a shell's quoting.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// For `Option<Vec<String>>` fields (`command`).
pub(crate) mod optional {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        d.deserialize_any(MaybeWords)
    }

    /// `command: ~` is no command, as an absent key is.
    struct MaybeWords;

    impl<'de> Visitor<'de> for MaybeWords {
        type Value = Option<Vec<String>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            Words.expecting(f)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Words.visit_seq(seq).map(Some)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Words.visit_str(s).map(Some)
        }
    }
}

/// For `Vec<String>` fields (`args`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(Words)
}

struct Words;

impl<'de> Visitor<'de> for Words {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of words, such as [llama-server, --port, \"${PORT}\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Word(w)) = seq.next_element()? {
            out.push(w);
        }
        Ok(out)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "a list of words, not one string (there is no shell to split it); write {}",
            as_list(s)
        )))
    }
}

/// One word: a string, or a number or boolean taken as its text.
struct Word(String);

impl<'de> de::Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WordVisitor).map(Word)
    }
}

struct WordVisitor;

impl Visitor<'_> for WordVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a word (a string, number or true/false)")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_string())
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        Ok(s)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
        Ok(b.to_string())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_i128<E: de::Error>(self, n: i128) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_u128<E: de::Error>(self, n: u128) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<String, E> {
        // YAML has already read `0.50` as 0.5; quote it to pass the exact text.
        Ok(format!("{n:?}"))
    }
}

/// `llama-server --port ${PORT} -c 4096` written as the YAML list it means: words
/// split at spaces outside quotes, each quoted when YAML would not read it as is.
fn as_list(s: &str) -> String {
    let words: Vec<String> = split(s)
        .into_iter()
        .map(|w| {
            let plain = !w.is_empty()
                && !w.starts_with(':')
                && w.chars()
                    .all(|c| c.is_alphanumeric() || "-_./=:+".contains(c));
            if plain {
                w
            } else {
                format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect();
    format!("[{}]", words.join(", "))
}

/// Words as a shell would split them, for quotes at least.
fn split(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let (mut word, mut quote, mut started) = (String::new(), None, false);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => (quote, started) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_string_is_written_out_as_a_list() {
        assert_eq!(
            as_list("llama-server --port ${PORT} -c 4096 -m /m/q.gguf"),
            r#"[llama-server, --port, "${PORT}", -c, 4096, -m, /m/q.gguf]"#
        );
        assert_eq!(as_list(r#"sh -c "exit 3""#), r#"[sh, -c, "exit 3"]"#);
    }

    #[derive(serde::Deserialize)]
    struct B {
        #[serde(default, deserialize_with = "optional::deserialize")]
        command: Option<Vec<String>>,
        #[serde(default, deserialize_with = "deserialize")]
        args: Vec<String>,
    }

    fn parse(yaml: &str) -> Result<B, String> {
        use figment::providers::Format;
        figment::Figment::from(crate::yaml::Yaml::string(yaml))
            .extract()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn words_of_any_scalar_are_their_text_and_null_is_no_command() {
        let b =
            parse("command: [srv, -c, 4096, --fa, true, --t, 0.5, --n, -1]\nargs: [1]").unwrap();
        assert_eq!(
            b.command.unwrap(),
            ["srv", "-c", "4096", "--fa", "true", "--t", "0.5", "--n", "-1"]
        );
        assert_eq!(b.args, ["1"]);
        assert!(parse("command: ~").unwrap().command.is_none());
        assert!(parse("{}").unwrap().command.is_none());
        let one = parse("command: srv --port 1").err().unwrap();
        assert!(one.contains("write [srv, --port, 1]"), "{one}");
    }
}
