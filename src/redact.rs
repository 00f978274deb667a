//! **Pure.** Takes personal data out of text that is logged or kept as an error: what a
//! provider or webhook answered (Twilio echoes the `To` number), and addresses a rendered URL
//! carries. Email addresses and phone numbers become `[email]` and `[phone]`.
//!
//! Why at the source and not in the log subscriber: errors are also stored (`last_error`,
//! the failed list) and shown by the API, and an erased contact must not be named there.

/// `text` with email addresses and phone numbers (7 or more digits, with `+`, spaces, dots,
/// dashes or parentheses between them) replaced.
pub fn personal_data(text: &str) -> String {
    // In a URL the `@` is often percent-encoded.
    let text = text.replace("%40", "@");
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < chars.len() {
        if let Some(end) = email_at(&chars, index) {
            // Drop the local part already written.
            while out.chars().next_back().is_some_and(is_local) {
                out.pop();
            }
            out.push_str("[email]");
            index = end;
            continue;
        }
        if let Some(end) = phone_at(&chars, index) {
            out.push_str("[phone]");
            index = end;
            continue;
        }
        out.push(chars[index]);
        index += 1;
    }
    out
}

fn is_local(c: char) -> bool {
    c.is_alphanumeric() || "._%+-".contains(c)
}

/// At an `@` with a local part before it and a dotted domain after it: the end of the domain.
fn email_at(chars: &[char], index: usize) -> Option<usize> {
    if chars[index] != '@' || index == 0 || !is_local(chars[index - 1]) {
        return None;
    }
    let mut end = index + 1;
    while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '-' || chars[end] == '.') {
        end += 1;
    }
    let domain: String = chars[index + 1..end].iter().collect();
    let domain = domain.trim_end_matches('.');
    (domain.contains('.') && !domain.starts_with('.')).then_some(index + 1 + domain.chars().count())
}

/// At the start of a phone number (not inside a longer word): its end.
fn phone_at(chars: &[char], index: usize) -> Option<usize> {
    let starts = chars[index] == '+' || chars[index].is_ascii_digit();
    if !starts || (index > 0 && (chars[index - 1].is_alphanumeric() || chars[index - 1] == '_')) {
        return None;
    }
    let mut end = index;
    let mut digits = 0;
    let mut last_digit = index;
    while end < chars.len() {
        let c = chars[end];
        if c.is_ascii_digit() {
            digits += 1;
            last_digit = end;
        } else if !(" .-()".contains(c) || (c == '+' && end == index)) {
            break;
        }
        end += 1;
    }
    // Ids, prices and times have fewer digits, or letters next to them.
    let next = chars.get(last_digit + 1).copied().unwrap_or(' ');
    (digits >= 7 && !next.is_alphanumeric()).then_some(last_digit + 1)
}

#[cfg(test)]
mod tests {
    use super::personal_data;

    #[test]
    fn addresses_and_numbers_go_and_the_rest_stays() {
        assert_eq!(
            personal_data("The 'To' number +1 (415) 555-0100 is not a valid phone number."),
            "The 'To' number [phone] is not a valid phone number."
        );
        assert_eq!(
            personal_data("cannot call `https://crm.example/hook?email=ada.l+x@example.co.uk&n=1`: 404"),
            "cannot call `https://crm.example/hook?email=[email]&n=1`: 404"
        );
        assert_eq!(personal_data("sms to 8613800138000 failed"), "sms to [phone] failed");
        assert_eq!(
            personal_data("GET /hook?email=ada%40example.com"),
            "GET /hook?email=[email]"
        );
        assert_eq!(
            personal_data("enrollment 42 step welcome seq 3 at 2026-12-01T10:00:00Z: 503 Service Unavailable"),
            "enrollment 42 step welcome seq 3 at 2026-12-01T10:00:00Z: 503 Service Unavailable"
        );
        assert_eq!(personal_data("id SM1234567890abcdef"), "id SM1234567890abcdef");
        assert_eq!(personal_data("user@localhost is fine"), "user@localhost is fine");
    }
}
