//! Escaping for the two places untrusted text lands in the page: HTML text and attribute
//! values written by Rust, and the JSON data island read by the script.

/// `text` safe inside an HTML element or a double- or single-quoted attribute value.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON text made safe inside `<script type="application/json">`: `<`, `>` and `&` become
/// `\u003c`, `\u003e`, `\u0026`, so no `</script`, `<!--` or `-->` can close or confuse
/// the element, and U+2028 and U+2029 become `\u2028` and `\u2029` (line terminators to
/// older JavaScript parsers). Outside strings JSON holds none of these characters, so the
/// result parses to the same value.
pub fn json_for_script(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 64);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_quotes() {
        assert_eq!(
            html(r#"<img src=x onerror="a('&')">"#),
            "&lt;img src=x onerror=&quot;a(&#39;&amp;&#39;)&quot;&gt;"
        );
    }

    #[test]
    fn json_keeps_its_value_and_loses_every_markup_character() {
        let value = serde_json::json!({"name": "</script><!-- -->&\u{2028}\u{2029}\\x41"});
        let text = json_for_script(&value.to_string());
        for forbidden in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!text.contains(forbidden), "{text}");
        }
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, value);
    }
}
