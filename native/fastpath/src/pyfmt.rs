//! Python's formatting, for messages that must read exactly like the Python router's.
//!
//! The router's messages embed values with `{value!r}` (a string's `repr()`), `{x:g}`, and upstream
//! words passed through `upstream.scrub` (URLs, IP addresses and `host:port` blanked out, so no client
//! learns an upstream's address). These are those functions, close enough to CPython for every value a
//! header, a JSON body or a table can hold (unit-tested against CPython's output).

fn python_printable(c: char) -> bool {
    // str.isprintable() for the characters a latin-1 header or a UTF-8 body may hold; beyond latin-1 the
    // control and format characters are the ones that matter.
    !(c.is_control()
        || matches!(c, '\u{a0}' | '\u{ad}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{200b}'..='\u{200f}'))
}

/// Python's `repr()` of a string: `'text'`, or `"it's"` when it holds a single quote and no double quote.
pub fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if python_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` (or `str()` at the top level, `top`) of a decoded JSON value.
pub fn py_value(value: &serde_json::Value, top: bool) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) if top => s.clone(),
        Value::String(s) => py_repr(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(|v| py_value(v, false)).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: {}", py_repr(k), py_value(v, false))).collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `repr()` of a float (shortest round trip, always with a `.0` or an exponent).
pub fn py_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let abs = value.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let text = format!("{value:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        return format!("{mantissa}e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs());
    }
    let text = format!("{value}");
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// Python's `format(value, "g")`: 6 significant digits, trailing zeros dropped.
pub fn py_g(value: f64) -> String {
    if !value.is_finite() {
        return py_float(value);
    }
    if value == 0.0 {
        return "0".to_owned();
    }
    let sci = format!("{value:.5e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if !(-4..6).contains(&exponent) {
        format!("{}e{}{:02}", trim(mantissa), if exponent < 0 { '-' } else { '+' }, exponent.abs())
    } else {
        let decimals = (5 - exponent).max(0) as usize;
        trim(&format!("{value:.decimals$}"))
    }
}

/// The first `n` characters of `text`.
pub fn prefix_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn boundary(chars: &[char], at: usize) -> bool {
    let before = at > 0 && is_word(chars[at - 1]);
    let after = at < chars.len() && is_word(chars[at]);
    before != after
}

fn digits(chars: &[char], at: usize) -> usize {
    chars[at..].iter().take_while(|c| c.is_ascii_digit()).count()
}

fn match_url(chars: &[char], i: usize) -> Option<usize> {
    if !chars[i].is_ascii_alphabetic() {
        return None;
    }
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '+' | '.' | '-')) {
        j += 1;
    }
    if chars.get(j..j + 3) != Some(&[':', '/', '/'][..]) {
        return None;
    }
    j += 3;
    while j < chars.len() && !(chars[j].is_whitespace() || chars[j] == '\'' || chars[j] == '"') {
        j += 1;
    }
    Some(j)
}

fn match_ipv4(chars: &[char], i: usize) -> Option<usize> {
    if !boundary(chars, i) {
        return None;
    }
    let mut j = i;
    for group in 0..4 {
        let n = digits(chars, j);
        if n == 0 || n > 3 {
            return None;
        }
        j += n;
        if group < 3 {
            if chars.get(j) != Some(&'.') {
                return None;
            }
            j += 1;
        }
    }
    if chars.get(j) == Some(&':') {
        let n = digits(chars, j + 1);
        if n > 0 && boundary(chars, j + 1 + n) {
            return Some(j + 1 + n);
        }
    }
    boundary(chars, j).then_some(j)
}

fn match_ipv6(chars: &[char], i: usize) -> Option<usize> {
    if chars[i] != '[' {
        return None;
    }
    let n = chars[i + 1..].iter().take_while(|c| c.is_ascii_hexdigit() || **c == ':').count();
    let mut j = i + 1 + n;
    if n == 0 || chars.get(j) != Some(&']') {
        return None;
    }
    j += 1;
    if chars.get(j) == Some(&':') {
        let d = digits(chars, j + 1);
        if d > 0 {
            j += 1 + d;
        }
    }
    Some(j)
}

fn match_host_port(chars: &[char], i: usize) -> Option<usize> {
    if !boundary(chars, i) {
        return None;
    }
    let label = |at: usize| chars[at..].iter().take_while(|c| is_word(**c) || **c == '-').count();
    let first = label(i);
    if first == 0 {
        return None;
    }
    let mut j = i + first;
    let mut groups = 0;
    while chars.get(j) == Some(&'.') {
        let n = label(j + 1);
        if n == 0 {
            break;
        }
        j += 1 + n;
        groups += 1;
    }
    if groups == 0 || chars.get(j) != Some(&':') {
        return None;
    }
    let d = digits(chars, j + 1);
    (d > 0 && boundary(chars, j + 1 + d)).then_some(j + 1 + d)
}

/// `text` with URLs, IP addresses and `host:port` blanked out: `upstream.scrub`, pattern for pattern.
pub fn scrub(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let found = match_url(&chars, i)
            .or_else(|| match_ipv4(&chars, i))
            .or_else(|| match_ipv6(&chars, i))
            .or_else(|| match_host_port(&chars, i));
        match found {
            Some(end) if end > i => {
                out.push_str("<address>");
                i = end;
            }
            _ => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_like_python() {
        assert_eq!(py_repr("abc"), "'abc'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("x\ty\u{7f}\u{e9}"), "'x\\ty\\x7f\u{e9}'");
        assert_eq!(py_repr("\u{a0}\u{ad}\u{85}"), "'\\xa0\\xad\\x85'");
        assert_eq!(py_value(&serde_json::json!({"a": [1, 2.5, null, true]}), true), "{'a': [1, 2.5, None, True]}");
        assert_eq!(py_value(&serde_json::json!("top"), true), "top");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e20), "1e+20");
    }

    #[test]
    fn g_format() {
        assert_eq!(py_g(10.0), "10");
        assert_eq!(py_g(0.5), "0.5");
        assert_eq!(py_g(2.25), "2.25");
        assert_eq!(py_g(1234567.0), "1.23457e+06");
        assert_eq!(py_g(0.00001), "1e-05");
    }

    #[test]
    fn scrubs_addresses() {
        assert_eq!(scrub("cannot reach http://10.0.0.5:8000/v2 now"), "cannot reach <address> now");
        assert_eq!(scrub("peer 10.1.2.3:8001 reset"), "peer <address> reset");
        assert_eq!(scrub("peer 10.1.2.3 reset"), "peer <address> reset");
        assert_eq!(scrub("v1.2.3.4x stays"), "v1.2.3.4x stays");
        assert_eq!(scrub("at [::1]:9 and triton.ns.svc:8000."), "at <address> and <address>.");
        assert_eq!(scrub("model input 3.5 is wrong"), "model input 3.5 is wrong");
        // Each expectation is CPython's `upstream.scrub` output.
        assert_eq!(scrub("a 1.2.3.4:80x b"), "a <address>:80x b");
        assert_eq!(scrub("-host.x:9 ok"), "-<address> ok");
        assert_eq!(scrub("x1.2.3.4"), "x1.2.3.4");
        assert_eq!(scrub("1.2.3.4.5"), "<address>.5");
    }
}
