//! `${VAR}` in a pipeline file: replaced by the environment variable's value before the YAML
//! is read, so credentials stay out of the file (`password: ${KAFKA_PASSWORD}`). `$${`
//! writes a literal `${`. A variable that is not set is an error at its line and column.
//!
//! Values never show in messages: the columns of every problem are mapped back to the file
//! as written, and a problem located at a substituted value names the variable instead of
//! its value. (Components must not log their settings' values either.)

use crate::error::ConfigIssue;

/// One substitution on one line: where the value stands in the substituted text and what
/// it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    line: usize,
    /// 1-based columns in the substituted line, `start..end`.
    start: usize,
    end: usize,
    /// 1-based column of `${` in the file as written, and the length of `${VAR}`.
    written_start: usize,
    written_len: usize,
    name: String,
    value: String,
}

/// What was substituted, to map problems back to the file as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interpolation {
    spans: Vec<Span>,
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`. Missing variables and malformed
/// references are returned as located issues.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Interpolation), Vec<ConfigIssue>> {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut issues = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let mut rest = line;
        // Columns count characters, as the YAML reader's do.
        let mut written_col = 1;
        let mut col = 1;
        while let Some(at) = rest.find('$') {
            let (before, from) = rest.split_at(at);
            out.push_str(before);
            let n = before.chars().count();
            written_col += n;
            col += n;
            if let Some(after) = from.strip_prefix("$${") {
                out.push_str("${");
                written_col += 3;
                col += 2;
                rest = after;
                continue;
            }
            let Some(after) = from.strip_prefix("${") else {
                out.push('$');
                written_col += 1;
                col += 1;
                rest = &from[1..];
                continue;
            };
            let Some(close) = after.find('}') else {
                issues.push(issue(line_no, written_col, "`${` without its `}`"));
                out.push_str(from);
                rest = "";
                break;
            };
            let name = &after[..close];
            let written_len = name.chars().count() + 3;
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                issues.push(issue(
                    line_no,
                    written_col,
                    format!("`${{{name}}}`: a variable name has letters, digits and `_`"),
                ));
            } else {
                match lookup(name) {
                    Some(value) if value.contains(['\n', '\r']) => issues.push(issue(
                        line_no,
                        written_col,
                        format!("environment variable `{name}` holds a line break"),
                    )),
                    Some(value) => {
                        let len = value.chars().count();
                        spans.push(Span {
                            line: line_no,
                            start: col,
                            end: col + len,
                            written_start: written_col,
                            written_len,
                            name: name.to_string(),
                            value: value.clone(),
                        });
                        out.push_str(&value);
                        col += len;
                    }
                    None => issues.push(issue(
                        line_no,
                        written_col,
                        format!("environment variable `{name}` is not set"),
                    )),
                }
            }
            written_col += written_len;
            rest = &after[close + 1..];
        }
        out.push_str(rest);
    }
    if issues.is_empty() {
        Ok((out, Interpolation { spans }))
    } else {
        Err(issues)
    }
}

fn issue(line: usize, column: usize, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        line,
        column,
        field: String::new(),
        message: message.into(),
    }
}

impl Interpolation {
    /// Every issue of `e` as the file is written.
    pub fn restore_error(&self, mut e: crate::error::ConfigError) -> crate::error::ConfigError {
        e.issues = e.issues.into_iter().map(|i| self.restore(i)).collect();
        e
    }

    /// `issue` as the file is written: its column moved back over substituted values, and
    /// a value it is located at named by its variable.
    pub fn restore(&self, mut issue: ConfigIssue) -> ConfigIssue {
        let mut shift: isize = 0;
        for s in self.spans.iter().filter(|s| s.line == issue.line) {
            if issue.column >= s.end {
                shift += (s.end - s.start) as isize - s.written_len as isize;
            } else if issue.column >= s.start {
                issue.column = s.written_start;
                if !s.value.is_empty() {
                    issue.message = issue.message.replace(&s.value, &format!("${{{}}}", s.name));
                }
                return issue;
            }
        }
        issue.column = (issue.column as isize - shift).max(1) as usize;
        issue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PASS" => Some("hunter22".into()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_dollars_escaped() {
        let (text, _) = interpolate("a: ${PASS}\nb: $${PASS} $x ${EMPTY}.\n", env).unwrap();
        assert_eq!(text, "a: hunter22\nb: ${PASS} $x .\n");
    }

    #[test]
    fn missing_and_malformed_references_are_located() {
        let issues = interpolate("x: 1\ny: ${NOPE} ${1A} ${NL}\nz: ${OPEN\n", env).unwrap_err();
        let got: Vec<(usize, usize, &str)> = issues
            .iter()
            .map(|i| (i.line, i.column, i.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, 4, "environment variable `NOPE` is not set"),
                (
                    2,
                    12,
                    "`${1A}`: a variable name has letters, digits and `_`"
                ),
                (2, 18, "environment variable `NL` holds a line break"),
                (3, 4, "`${` without its `}`"),
            ]
        );
    }

    #[test]
    fn problems_point_at_the_file_as_written_and_never_show_a_value() {
        let (_, map) = interpolate("d: {a: ${PASS}, b: 3x}\n", env).unwrap();
        // `3x` stands at column 21 after substitution, 20 as written.
        let after = map.restore(issue(1, 21, "invalid duration `3x`"));
        assert_eq!((after.line, after.column), (1, 20));
        // A problem with the substituted value itself names the variable.
        let at = map.restore(issue(1, 10, "invalid duration `hunter22`"));
        assert_eq!(
            (at.column, at.message.as_str()),
            (8, "invalid duration `${PASS}`")
        );
        let before = map.restore(issue(1, 2, "x"));
        assert_eq!(before.column, 2);
    }
}
