//! The TOML key at a parse error's position.

/// Best-effort TOML key path at a byte span: the enclosing `\[table\]` header
/// plus the key on that line.
pub(super) fn key_at_span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "<file>".to_string();
    };
    let start = span.start.min(text.len());
    // Back up to a char boundary.
    let mut start = start;
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in before[..line_start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    if !line.starts_with('[') && !line.contains('=') {
        return "<file>".to_string();
    }
    let key = if line.starts_with('[') {
        line.trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    } else {
        let k = line.split('=').next().unwrap_or("").trim().to_string();
        if table.is_empty() {
            k
        } else if k.is_empty() {
            table
        } else {
            format!("{table}.{k}")
        }
    };
    if key.is_empty() {
        "<file>".to_string()
    } else {
        key
    }
}
