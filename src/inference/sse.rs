//! Server-sent events, as OpenAI-compatible servers stream chat
//! completions: `data: {...}` lines, events ended by a blank line, the last
//! one `data: [DONE]`.

/// Cuts a byte stream, in chunks of any size, into the `data` of each event.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Takes the next bytes; appends the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8], events: &mut Vec<String>) {
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let line = if self.line.is_empty() {
                self.line_done(&rest[..end], events);
                None
            } else {
                self.line.extend_from_slice(&rest[..end]);
                Some(std::mem::take(&mut self.line))
            };
            if let Some(line) = line {
                self.line_done(&line, events);
            }
            rest = &rest[end + 1..];
        }
        self.line.extend_from_slice(rest);
    }

    /// The stream ended: an unended last line and event count too.
    pub fn finish(&mut self, events: &mut Vec<String>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, events);
        }
        self.line_done(b"", events);
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        // Comments (": keep-alive") and fields other than data are skipped.
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        if field != b"data" {
            return;
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(&String::from_utf8_lossy(value));
        self.has_data = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            parser.push(c, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn events_are_cut_whatever_the_chunking() {
        let stream =
            "data: {\"a\":1}\n\n: keep-alive\n\r\nevent: x\ndata: caf\u{e9}\r\ndata: two\r\n\r\ndata: [DONE]\n\n";
        let want = vec!["{\"a\":1}".to_string(), "caf\u{e9}\ntwo".into(), "[DONE]".into()];
        assert_eq!(events(&[stream.as_bytes()]), want);
        // Byte by byte, splitting the two-byte character too.
        let bytes: Vec<&[u8]> = stream.as_bytes().chunks(1).collect();
        assert_eq!(events(&bytes), want);
        // A last event without its blank line still counts.
        assert_eq!(events(&[b"data: x"]), vec!["x".to_string()]);
        assert!(events(&[b": only a comment\n\n"]).is_empty());
    }
}
