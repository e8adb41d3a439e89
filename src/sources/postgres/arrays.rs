//! Postgres array values (`{1,NULL,"a, b"}`, what pgoutput and a snapshot query send) as the
//! JSON arrays Debezium writes for them, element by element:
//! - int2/int4/int8/oid: numbers; bool: `true`/`false`;
//! - float4/float8: numbers written as Java writes them (`0.25`, `1.0E20`, `-1.0E-7`), and
//!   `"NaN"`, `"Infinity"`, `"-Infinity"` as strings (JSON has no such numbers);
//! - date: days since the epoch; time: microseconds since midnight; timestamp: microseconds
//!   since the epoch; timestamptz: `"2026-01-01T08:00:00.250000Z"`;
//! - everything else (text, varchar, numeric, uuid, enums, json, …): the element's text as a
//!   string.
//!
//! `NULL` elements are `null`; multi-dimensional arrays nest; a lower-bound decoration
//! (`[0:1]={…}`) is skipped. Pure: text that is not an array literal is an error, never a
//! panic.

use crate::format::{parse_date, parse_timestamp, write_timestamp};

/// How an array's elements are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    Int,
    Bool,
    Float64,
    Float32,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Text,
}

/// Array type OIDs Postgres assigns at bootstrap, and their elements.
pub fn element_of(array_oid: u32) -> Option<Element> {
    Some(match array_oid {
        1000 => Element::Bool,
        1005 | 1007 | 1016 | 1028 => Element::Int,
        1021 => Element::Float32,
        1022 => Element::Float64,
        1182 => Element::Date,
        1183 => Element::Time,
        1115 => Element::Timestamp,
        1185 => Element::TimestampTz,
        // text, varchar, bpchar, name, numeric, uuid, json, jsonb, inet, bytea, interval
        1009 | 1015 | 1014 | 1003 | 1231 | 2951 | 199 | 3807 | 1041 | 1001 | 1187 => Element::Text,
        _ => return None,
    })
}

/// The JSON array for the array literal `text`.
pub fn array_json(text: &str, element: Element) -> Result<String, String> {
    let body = match text.strip_prefix('[') {
        Some(_) => text
            .find("={")
            .map(|i| &text[i + 1..])
            .ok_or("an array's bounds without a value")?,
        None => text,
    };
    let mut parser = Parser {
        text: body,
        pos: 0,
        depth: 0,
        out: String::with_capacity(body.len() + 2),
        element,
    };
    parser.array()?;
    parser.skip_space();
    if parser.pos != body.len() {
        return Err(format!("text after the array at byte {}", parser.pos));
    }
    Ok(parser.out)
}

/// Postgres's limit on array dimensions (`MAXDIM`).
const MAX_DIMENSIONS: usize = 6;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    out: String,
    element: Element,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", byte as char, self.pos))
        }
    }

    fn array(&mut self) -> Result<(), String> {
        self.skip_space();
        self.depth += 1;
        if self.depth > MAX_DIMENSIONS {
            return Err(format!("more than {MAX_DIMENSIONS} nested arrays"));
        }
        self.expect(b'{')?;
        self.out.push('[');
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.out.push(']');
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.skip_space();
            match self.peek() {
                Some(b'{') => self.array()?,
                Some(b'"') => {
                    let text = self.quoted()?;
                    self.element(&text)?;
                }
                _ => {
                    let text = self.unquoted()?;
                    if text.eq_ignore_ascii_case("NULL") {
                        self.out.push_str("null");
                    } else {
                        self.element(&text)?;
                    }
                }
            }
            self.skip_space();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.out.push(',');
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.out.push(']');
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
            }
        }
    }

    /// A double-quoted element; a backslash takes the next character literally.
    fn quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut text = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(text);
                }
                '\\' => match chars.next() {
                    Some((_, c)) => text.push(c),
                    None => break,
                },
                c => text.push(c),
            }
        }
        Err("an unterminated quoted element".into())
    }

    /// An unquoted element, up to the next `,` or `}`, trimmed.
    fn unquoted(&mut self) -> Result<String, String> {
        let mut text = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                ',' | '}' => {
                    end = Some(i);
                    break;
                }
                '{' | '"' => return Err(format!("'{c}' inside an unquoted element")),
                '\\' => match chars.next() {
                    Some((_, c)) => text.push(c),
                    None => return Err("a trailing backslash".into()),
                },
                c => text.push(c),
            }
        }
        let end = end.ok_or("an unterminated array")?;
        self.pos += end;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("an empty element at byte {}", self.pos));
        }
        Ok(trimmed.to_string())
    }

    fn element(&mut self, text: &str) -> Result<(), String> {
        let bad = |what: &str| format!("array element \"{}\" is not {what}", text.escape_debug());
        let out = &mut self.out;
        match self.element {
            Element::Int => {
                text.parse::<i64>().map_err(|_| bad("an integer"))?;
                out.push_str(text);
            }
            Element::Bool => out.push_str(match text {
                "t" => "true",
                "f" => "false",
                _ => return Err(bad("a bool (t or f)")),
            }),
            Element::Float64 | Element::Float32 => match text {
                "NaN" | "Infinity" | "-Infinity" => {
                    out.push('"');
                    out.push_str(text);
                    out.push('"');
                }
                _ => {
                    let v: f64 = text.parse().map_err(|_| bad("a float"))?;
                    let scientific = if self.element == Element::Float32 {
                        format!("{:e}", v as f32)
                    } else {
                        format!("{v:e}")
                    };
                    java_float(&scientific, out);
                }
            },
            Element::Date => {
                let days = match text {
                    "infinity" => i32::MAX,
                    "-infinity" => i32::MIN,
                    _ => parse_date(text).ok_or_else(|| bad("a date"))?,
                };
                out.push_str(&days.to_string());
            }
            Element::Time => {
                out.push_str(&time_micros(text).ok_or_else(|| bad("a time"))?.to_string())
            }
            Element::Timestamp => {
                let micros = timestamp(text).ok_or_else(|| bad("a timestamp"))?;
                out.push_str(&micros.to_string());
            }
            Element::TimestampTz => {
                let micros = timestamp(text).ok_or_else(|| bad("a timestamp"))?;
                let mut text = Vec::with_capacity(32);
                write_timestamp(micros, &mut text);
                // Debezium writes six fraction digits.
                let mut text = String::from_utf8(text).map_err(|e| e.to_string())?;
                let fraction = text.rfind('.').map_or(0, |dot| text.len() - dot - 2);
                if fraction == 3 {
                    text.insert_str(text.len() - 1, "000");
                }
                out.push('"');
                out.push_str(&text);
                out.push('"');
            }
            Element::Text => {
                out.push_str(&serde_json::to_string(text).map_err(|e| e.to_string())?);
            }
        }
        Ok(())
    }
}

/// A timestamp element: `infinity` and `-infinity` are the largest and smallest times, as
/// for a scalar column.
fn timestamp(text: &str) -> Option<i64> {
    match text {
        "infinity" => Some(i64::MAX),
        "-infinity" => Some(i64::MIN),
        _ => parse_timestamp(text),
    }
}

/// Postgres's `time` text (`HH:MM:SS[.ffffff]`, `24:00:00` included) as microseconds since
/// midnight.
pub fn time_micros(text: &str) -> Option<i64> {
    let (hms, fraction) = match text.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (text, None),
    };
    let mut parts = hms.split(':');
    let mut field = |max: i64| -> Option<i64> {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok().filter(|v| *v <= max)
    };
    let (h, m, s) = (field(24)?, field(59)?, field(60)?);
    if parts.next().is_some() {
        return None;
    }
    let micros = match fraction {
        None => 0,
        Some(f) if (1..=6).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<i64>().ok()? * 10i64.pow(6 - f.len() as u32)
        }
        Some(_) => return None,
    };
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + micros;
    (total <= 86_400_000_000).then_some(total)
}

/// Writes a float as Java's `Double.toString` does, from Rust's shortest scientific form
/// (`-1.5e-7`): plain with at least one fraction digit for 1e-3 ≤ |v| < 1e7, otherwise
/// `d.dddE±n`.
fn java_float(scientific: &str, out: &mut String) {
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if digits.bytes().all(|b| b == b'0') {
        out.push_str("0.0");
    } else if (-3..7).contains(&exponent) {
        if exponent < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            out.push_str(&digits);
        } else {
            let point = exponent as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digits.len() > 1 { &digits[1..] } else { "0" });
        out.push('E');
        out.push_str(&exponent.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str, element: Element) -> String {
        array_json(text, element).unwrap()
    }

    #[test]
    fn elements_are_written_as_debezium_writes_them() {
        assert_eq!(json("{1,NULL,-3}", Element::Int), "[1,null,-3]");
        assert_eq!(json("{}", Element::Int), "[]");
        assert_eq!(json("{t,f,NULL}", Element::Bool), "[true,false,null]");
        assert_eq!(
            json(
                r#"{plain,"with, comma","quote \"q\" and \\ slash","","NULL",NULL,"{x}"}"#,
                Element::Text
            ),
            r#"["plain","with, comma","quote \"q\" and \\ slash","","NULL",null,"{x}"]"#
        );
        assert_eq!(
            json(
                "{0.25,-1e-07,NaN,1e+20,-Infinity,0,123456789.5}",
                Element::Float64
            ),
            r#"[0.25,-1.0E-7,"NaN",1.0E20,"-Infinity",0.0,1.234567895E8]"#
        );
        assert_eq!(
            json("{0.1,1e+20,0.001}", Element::Float32),
            "[0.1,1.0E20,0.001]"
        );
        assert_eq!(json("{2026-01-02,NULL}", Element::Date), "[20455,null]");
        assert_eq!(
            json("{10:00:00.5,23:59:59}", Element::Time),
            "[36000500000,86399000000]"
        );
        assert_eq!(
            json(r#"{"2026-01-01 10:00:00.25"}"#, Element::Timestamp),
            "[1767261600250000]"
        );
        assert_eq!(
            json(
                r#"{"2026-01-01 08:00:00.25+00","2026-01-01 08:00:00.000001+00"}"#,
                Element::TimestampTz
            ),
            r#"["2026-01-01T08:00:00.250000Z","2026-01-01T08:00:00.000001Z"]"#
        );
        assert_eq!(json("{{1,2},{3,4}}", Element::Int), "[[1,2],[3,4]]");
        assert_eq!(json("[0:1]={1,2}", Element::Int), "[1,2]");
        assert_eq!(json("{{{{{{1}}}}}}", Element::Int), "[[[[[[1]]]]]]");
        assert_eq!(
            json("{infinity,-infinity}", Element::Timestamp),
            format!("[{},{}]", i64::MAX, i64::MIN)
        );

        assert_eq!(json("{ a b , c }", Element::Text), r#"["a b","c"]"#);
    }

    #[test]
    fn java_float_text() {
        for (v, want) in [
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1e7, "1.0E7"),
            (9_999_999.0, "9999999.0"),
            (0.001, "0.001"),
            (0.000_999, "9.99E-4"),
            (-2.5e-300, "-2.5E-300"),
            (-0.0, "-0.0"),
        ] {
            let mut out = String::new();
            java_float(&format!("{v:e}"), &mut out);
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn what_is_not_an_array_literal_is_an_error() {
        for (text, element) in [
            ("", Element::Int),
            ("1,2", Element::Int),
            ("{1,2", Element::Int),
            ("{1,,2}", Element::Int),
            ("{x}", Element::Int),
            ("{1}x", Element::Int),
            (r#"{"a}"#, Element::Text),
            ("{a\\", Element::Text),
            ("[0:1]", Element::Int),
            ("{yes}", Element::Bool),
            ("{25:00:00}", Element::Time),
            ("{{1}", Element::Int),
            ("{{{{{{{1}}}}}}}", Element::Int),
        ] {
            assert!(array_json(text, element).is_err(), "{text:?}");
        }
        assert_eq!(time_micros("24:00:00"), Some(86_400_000_000));
        assert_eq!(time_micros("24:00:01"), None);
        assert_eq!(time_micros("1:00:00"), None);
    }
}
