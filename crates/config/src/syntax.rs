//! YAML syntax errors in plain words, at the line to edit. The parser reports where
//! it gave up, which for an unclosed `[` is the line after it, and in its own terms
//! ("while parsing a flow sequence, expected ',' or ']'"); the three mistakes
//! people make in routes.yaml get said as what to write instead.

use crate::locate::SyntaxError;

/// The parser's error, moved to the line that holds the mistake and explained when
/// it is one of the known ones; otherwise as the parser said it.
pub(crate) fn explain(text: &str, e: SyntaxError) -> SyntaxError {
    let lines: Vec<&str> = text.lines().collect();
    let at = |n: usize| lines.get(n.wrapping_sub(1)).copied().unwrap_or("");
    let said = &e.message;

    // A tab in the indentation: YAML indents with spaces only. The parser may stop
    // at the end of the line before it.
    if let Some(n) = [e.line, e.line + 1]
        .into_iter()
        .find(|n| indent_has_tab(at(*n)))
    {
        let col = at(n).find('\t').map_or(e.col, |i| i + 1);
        return SyntaxError {
            line: n,
            col,
            message: format!("a tab in the indentation; indent with spaces (the parser: {said})"),
        };
    }
    let line = at(e.line);

    // A placeholder written bare inside [ ]: `{` begins a mapping there.
    if let Some(col) = bare_placeholder(line) {
        let end = line[col..].find('}').map_or(line.len(), |i| col + i + 1);
        let written = &line[col..end];
        return SyntaxError {
            line: e.line,
            col: col + 1,
            message: format!(
                "`{written}` must be quoted inside [ ]: write \"{written}\" (the parser: {said})"
            ),
        };
    }

    // A `[` or `{` left open: the parser only notices on a later line.
    if let Some((n, col, open)) = unclosed_before(&lines, e.line) {
        let close = if open == '[' { ']' } else { '}' };
        return SyntaxError {
            line: n,
            col,
            message: format!(
                "the `{open}` on this line is never closed; end it with `{close}` (the parser, at line {}: {said})",
                e.line
            ),
        };
    }
    e
}

fn indent_has_tab(line: &str) -> bool {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .any(|c| c == '\t')
}

/// The 0-based column of a `${` outside quotes and comments, inside a flow.
fn bare_placeholder(line: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return None,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, '$') if depth > 0 && line[i..].starts_with("${") => return Some(i),
            _ => {}
        }
    }
    None
}

/// The line (1-based), column and bracket of the last `[`/`{` opened before line
/// `upto` and still open when that line begins.
fn unclosed_before(lines: &[&str], upto: usize) -> Option<(usize, usize, char)> {
    let mut open: Vec<(usize, usize, char)> = Vec::new();
    for (n, line) in lines.iter().enumerate().take(upto.saturating_sub(1)) {
        let mut quote = None;
        for (i, c) in line.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if i == 0 || line[..i].ends_with(' ') => break,
                (None, '[' | '{') => open.push((n + 1, i + 1, c)),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    // Only a bracket left open on an earlier line, not one the error line is inside.
    open.first().copied().filter(|(n, _, _)| *n < upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: usize, col: usize) -> SyntaxError {
        SyntaxError {
            line,
            col,
            message: "the parser's words".into(),
        }
    }

    #[test]
    fn an_unclosed_bracket_is_placed_on_its_own_line() {
        let text = "a: 1\nb: [x, y\nc: 2\n";
        let e = explain(text, err(3, 2));
        assert_eq!((e.line, e.col), (2, 4));
        assert!(
            e.message.contains("never closed; end it with `]`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_bare_placeholder_in_a_flow_list_is_told_to_be_quoted() {
        let text = "c: [srv, --port, ${PORT}]\n";
        let e = explain(text, err(1, 19));
        assert_eq!((e.line, e.col), (1, 18));
        assert!(e
            .message
            .starts_with("`${PORT}` must be quoted inside [ ]: write \"${PORT}\""));
    }

    #[test]
    fn a_tab_is_told_to_be_spaces() {
        let e = explain("a:\n\tb: 1\n", err(2, 1));
        assert!(e
            .message
            .starts_with("a tab in the indentation; indent with spaces"));
    }

    #[test]
    fn other_errors_are_left_as_the_parser_said() {
        let e = explain("a: 1\n  b: 2\n", err(2, 4));
        assert_eq!(
            (e.line, e.col, e.message.as_str()),
            (2, 4, "the parser's words")
        );
    }
}
