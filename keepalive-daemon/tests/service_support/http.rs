//! Reading the daemon's HTTP answers.
/// The body of a raw HTTP/1.1 response, de-chunked when the server streamed it (`/sockets`
/// is written as it is read, so it comes chunked).
pub fn dechunk(raw: &str) -> String {
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return String::new();
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
