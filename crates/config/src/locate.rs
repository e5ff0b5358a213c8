//! Where each key stands in routes.yaml, so every error can name its line.
//!
//! figment and serde know key paths but not lines; this walks the YAML events once
//! and remembers the line of every mapping key and sequence item. It also catches
//! what a deserializer would silently resolve: a key written twice.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Clone, Debug, Default)]
pub struct LineIndex {
    lines: HashMap<Vec<String>, usize>,
    /// (path, line of the repeat, line of the first)
    pub duplicates: Vec<(Vec<String>, usize, usize)>,
}

/// A syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl LineIndex {
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let mut walker = Walker::default();
        Parser::new_from_str(text)
            .load(&mut walker, false)
            .map_err(|e| SyntaxError {
                line: e.marker().line(),
                col: e.marker().col() + 1,
                message: e.info().to_string(),
            })?;
        Ok(walker.index)
    }

    /// The line of the deepest key on `path` that the file has.
    pub fn line_of(&self, path: &[String]) -> Option<usize> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.lines.get(&path[..n]).copied())
    }

    /// The line of exactly this key, if the file has it.
    pub fn exact(&self, path: &[String]) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    /// The path down to the current frame (keys and indexes).
    path: Vec<String>,
    index: LineIndex,
}

impl Walker {
    /// Records a node at the current position; returns true when it is a mapping key.
    fn node(&mut self, key_text: Option<&str>, line: usize) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) if key.is_none() => {
                let k = key_text.unwrap_or("?").to_string();
                *key = Some(k.clone());
                let mut p = self.path.clone();
                p.push(k);
                if let Some(&first) = self.index.lines.get(&p) {
                    // Inside a repeated key every child repeats too; name only the key.
                    if !self.index.duplicates.iter().any(|(d, ..)| p.starts_with(d)) {
                        self.index.duplicates.push((p, line, first));
                    }
                } else {
                    self.index.lines.insert(p, line);
                }
                true
            }
            Some(Frame::Seq { next }) => {
                let mut p = self.path.clone();
                p.push(next.to_string());
                self.index.lines.insert(p, line);
                false
            }
            _ => false,
        }
    }

    /// Segment under which a child container of the current frame lives.
    fn child_segment(&self) -> Option<String> {
        match self.stack.last()? {
            Frame::Map { key } => key.clone(),
            Frame::Seq { next } => Some(next.to_string()),
        }
    }

    /// A value finished: the parent mapping now expects a key, the sequence moves on.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { next }) => *next += 1,
            None => {}
        }
    }

    fn open(&mut self, frame: Frame, line: usize) {
        self.node(None, line);
        if let Some(seg) = self.child_segment() {
            self.path.push(seg);
        }
        self.stack.push(frame);
    }

    fn close(&mut self) {
        self.stack.pop();
        if !self.stack.is_empty() {
            self.path.pop();
        }
        self.value_done();
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) if !self.node(Some(&text), line) => self.value_done(),
            Event::Alias(_) if !self.node(None, line) => self.value_done(),
            Event::MappingStart(..) => self.open(Frame::Map { key: None }, line),
            Event::SequenceStart(..) => self.open(Frame::Seq { next: 0 }, line),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn finds_lines_of_nested_keys_and_items() {
        let y = "listen: 1\nmodels:\n  a.b:\n    memory: 3GB\n    aliases: [x, y]\n  c:\n    backend: z\n";
        let ix = LineIndex::parse(y).unwrap();
        assert_eq!(ix.exact(&p(&["listen"])), Some(1));
        assert_eq!(ix.exact(&p(&["models", "a.b", "memory"])), Some(4));
        assert_eq!(ix.exact(&p(&["models", "a.b", "aliases", "1"])), Some(5));
        assert_eq!(ix.exact(&p(&["models", "c", "backend"])), Some(7));
        assert_eq!(ix.line_of(&p(&["models", "c", "nothing"])), Some(6));
    }

    #[test]
    fn reports_duplicate_keys_with_both_lines() {
        let y = "models:\n  a:\n    backend: x\n  a:\n    backend: y\n";
        let ix = LineIndex::parse(y).unwrap();
        assert_eq!(ix.duplicates, vec![(p(&["models", "a"]), 4, 2)]);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = LineIndex::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line >= 1, "{e:?}");
    }
}
