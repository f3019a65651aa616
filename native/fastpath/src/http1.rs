//! The data listener's HTTP/1.1 wire format, strictly: request heads, request bodies, response heads.
//!
//! The fast path stands in front of the Python router, so whatever it lets through must mean exactly one
//! thing to everyone behind it (request smuggling). It therefore refuses, itself, every request whose
//! framing is not plain: line ends other than CRLF, obsolete line folding, control bytes, a `Content-Length`
//! that is not ASCII digits or given twice, a `Transfer-Encoding` other than one `chunked` or together with
//! `Content-Length`, a chunk size that is not hex, a method llhttp does not know, a target that is not
//! printable ASCII, an HTTP version other than 1.0 and 1.1. `httparse` parses the request line and the
//! headers; the checks above it lacks are made here. The head is measured as the Python guard
//! (`workers/router/http_guard.py`) measures it: the target plus each header's name, value and 4 bytes;
//! an incomplete head is measured by the bytes received for it.
//!
//! Everything here is pure (bytes in, a verdict out), so it is unit-tested directly.

use std::cell::RefCell;
use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};

/// The methods llhttp (the Python router's parser) accepts, but `CONNECT` (a tunnel, never served).
const METHODS: [&str; 34] = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "QUERY",
];

/// Headers parsed without a heap allocation; a head with more retries with room for every header the
/// size limit allows.
const FEW_HEADERS: usize = 48;
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a head or a body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Not HTTP/1.1 as this listener accepts it: 400.
    Malformed,
    /// The head (or the trailers) over `max_header_bytes`: 431.
    TooLarge,
}

/// How far a head in the buffer has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head ends at this offset (after its empty line).
    Complete(usize),
    /// Not yet; scanning may resume at this offset.
    Partial(usize),
    /// A bare LF or CR: refused at once, not waited for.
    Malformed,
}

/// Look for the end of the head in `buf`, from `from` (a previous [`Scan::Partial`]); every line must end
/// with CRLF.
pub fn scan(buf: &[u8], from: usize) -> Scan {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Scan::Malformed;
                }
                if i >= 3 && buf[i - 2] == b'\n' && buf[i - 3] == b'\r' {
                    return Scan::Complete(i + 1);
                }
            }
            b'\r' if i + 1 == buf.len() => return Scan::Partial(i), // its LF may come with the next read
            b'\r' if buf[i + 1] != b'\n' => return Scan::Malformed,
            _ => {}
        }
        i += 1;
    }
    Scan::Partial(buf.len())
}

/// Empty lines before a request line (RFC 9112 section 2.2 allows a server to ignore them, llhttp does).
pub fn skip_empty_lines(buf: &mut BytesMut) {
    let n = buf.chunks_exact(2).take_while(|pair| *pair == b"\r\n").count() * 2;
    if n > 0 {
        let _ = buf.split_to(n);
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0: no body).
    Length(u64),
    Chunked,
}

/// A request head that passed every check.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub http10: bool,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// HTTP/1.1 without `Connection: close` (uvicorn never keeps an HTTP/1.0 connection).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The head's size as the Python guard counts it (trailers add to it).
    pub counted: usize,
}

impl Head {
    pub fn declared(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        }
    }
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &value[start..end]
}

/// Parse and check a complete head (`raw` ends with its empty line).
pub fn parse_head(raw: &[u8], max_header_bytes: usize) -> Result<Head, Fault> {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    match parse_with(&mut few, raw, max_header_bytes) {
        Some(result) => result,
        None => {
            // Every header counts at least 5 bytes (a name, ":" and the 4 the guard adds), so a head with more
            // than this is over the limit whatever its headers hold.
            let mut many = vec![httparse::EMPTY_HEADER; max_header_bytes / 5 + 2];
            parse_with(&mut many, raw, max_header_bytes).unwrap_or(Err(Fault::TooLarge))
        }
    }
}

/// The checked head, or `None` when it has more headers than `slots`.
fn parse_with<'b>(
    slots: &mut [httparse::Header<'b>],
    raw: &'b [u8],
    max_header_bytes: usize,
) -> Option<Result<Head, Fault>> {
    let mut request = httparse::Request::new(slots);
    let parsed = httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .parse_request(&mut request, raw);
    match parsed {
        Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
        Err(httparse::Error::TooManyHeaders) => return None,
        _ => return Some(Err(Fault::Malformed)),
    }
    Some(check(&request, max_header_bytes))
}

fn check(request: &httparse::Request<'_, '_>, max_header_bytes: usize) -> Result<Head, Fault> {
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(Fault::Malformed);
    };
    if !METHODS.contains(&method) {
        return Err(Fault::Malformed);
    }
    if target.is_empty() || !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(Fault::Malformed);
    }
    let mut counted = target.len();
    if counted > max_header_bytes {
        return Err(Fault::TooLarge);
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    let (mut length, mut chunked, mut lengths, mut encodings) = (None, false, 0, 0);
    let (mut close, mut expect_continue) = (false, false);
    for header in request.headers.iter() {
        let value = trim(header.value);
        counted += header.name.len() + value.len() + 4;
        if counted > max_header_bytes {
            return Err(Fault::TooLarge);
        }
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| Fault::Malformed)?;
        match name.as_str() {
            "content-length" => {
                lengths += 1;
                if lengths > 1 || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err(Fault::Malformed);
                }
                let digits = std::str::from_utf8(value).map_err(|_| Fault::Malformed)?;
                length = Some(digits.parse::<u64>().map_err(|_| Fault::Malformed)?);
                // overflow: refused
            }
            "transfer-encoding" => {
                encodings += 1;
                if encodings > 1 || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(Fault::Malformed);
                }
                chunked = true;
            }
            "connection" => {
                close |= value.split(|b| *b == b',').any(|token| trim(token).eq_ignore_ascii_case(b"close"));
            }
            "expect" => expect_continue |= value.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        headers.append(name, HeaderValue::from_bytes(value).map_err(|_| Fault::Malformed)?);
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return Err(Fault::Malformed),
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        (None, false) => Framing::Length(0),
    };
    let uri = target.parse::<Uri>().map_err(|_| Fault::Malformed)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Fault::Malformed)?;
    let http10 = version == 0;
    Ok(Head { method, uri, http10, headers, framing, keep_alive: !http10 && !close, expect_continue, counted })
}

/// What [`BodyDecoder::next`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The body of one request, taken out of the connection's buffer as it arrives.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    /// The head's size as the guard counts it; trailer fields add to it.
    counted: usize,
    max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Done,
}

impl BodyDecoder {
    pub fn new(head: &Head, max_header_bytes: usize) -> Self {
        let state = match head.framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
        };
        BodyDecoder { state, counted: head.counted, max_header_bytes }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come when the length is declared (`None` for a chunked body).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            State::Chunked(_) => None,
        }
    }

    /// The next piece of the body in `buf` (consumed from it).
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Piece, Fault> {
        loop {
            match self.state {
                State::Done => return Ok(Piece::End),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    let take = (buf.len() as u64).min(n) as usize;
                    self.state = if take as u64 == n { State::Done } else { State::Length(n - take as u64) };
                    return Ok(Piece::Data(buf.split_to(take).freeze()));
                }
                State::Chunked(Chunk::Size) => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE)? else {
                        let partial = buf.strip_suffix(b"\r").unwrap_or(buf);
                        check_size_line(partial, false)?;
                        return Ok(Piece::More);
                    };
                    let size = check_size_line(&buf[..line], true)?;
                    let _ = buf.split_to(line + 2);
                    self.state = State::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                State::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    let take = (buf.len() as u64).min(n) as usize;
                    let rest = n - take as u64;
                    self.state = State::Chunked(if rest == 0 { Chunk::DataEnd } else { Chunk::Data(rest) });
                    return Ok(Piece::Data(buf.split_to(take).freeze()));
                }
                State::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(Fault::Malformed);
                        }
                        return Ok(Piece::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Fault::Malformed);
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Chunked(Chunk::Size);
                }
                State::Chunked(Chunk::Trailers) => {
                    let Some(at) = line(buf, usize::MAX)? else {
                        // a field line longer than the room left is over the limit whatever it holds
                        if buf.len() > self.max_header_bytes.saturating_sub(self.counted) + 2 {
                            return Err(Fault::TooLarge);
                        }
                        return Ok(Piece::More);
                    };
                    if at == 0 {
                        let _ = buf.split_to(2);
                        self.state = State::Done;
                        return Ok(Piece::End);
                    }
                    let (name, value) = trailer_field(&buf[..at])?;
                    self.counted += name + value + 4;
                    if self.counted > self.max_header_bytes {
                        return Err(Fault::TooLarge);
                    }
                    let _ = buf.split_to(at + 2);
                }
            }
        }
    }
}

/// The offset of the CRLF ending the first line of `buf`, `None` while it is incomplete; a bare CR or LF,
/// or no line end within `most` bytes, is refused.
fn line(buf: &[u8], most: usize) -> Result<Option<usize>, Fault> {
    for (i, b) in buf.iter().enumerate() {
        match b {
            b'\n' => return Err(Fault::Malformed),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(Fault::Malformed),
                    None => Ok(None),
                }
            }
            _ if i >= most => return Err(Fault::Malformed),
            _ => {}
        }
    }
    if buf.len() > most {
        return Err(Fault::Malformed);
    }
    Ok(None)
}

/// A chunk-size line: 1 to 16 hex digits, then optional `;extensions` (visible ASCII, spaces and tabs).
fn check_size_line(text: &[u8], complete: bool) -> Result<u64, Fault> {
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(Fault::Malformed);
    }
    let rest = &text[digits..];
    match rest.first() {
        None if !complete => return Ok(0),
        None => {}
        Some(b';') if digits > 0 && rest.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) => {}
        Some(_) => return Err(Fault::Malformed),
    }
    if digits == 0 {
        return if complete { Err(Fault::Malformed) } else { Ok(0) };
    }
    let hex = std::str::from_utf8(&text[..digits]).map_err(|_| Fault::Malformed)?;
    u64::from_str_radix(hex, 16).map_err(|_| Fault::Malformed)
}

/// A trailer field line (without its CRLF): its name's and trimmed value's lengths.
fn trailer_field(line: &[u8]) -> Result<(usize, usize), Fault> {
    let colon = line.iter().position(|b| *b == b':').ok_or(Fault::Malformed)?;
    let name = &line[..colon];
    if name.is_empty() || HeaderName::from_bytes(name).is_err() || name.iter().any(|b| matches!(b, b' ' | b'\t')) {
        return Err(Fault::Malformed);
    }
    let value = trim(&line[colon + 1..]);
    if !value.iter().all(|b| *b == b'\t' || *b >= 0x20 && *b != 0x7f) {
        return Err(Fault::Malformed);
    }
    Ok((name.len(), value.len()))
}

/// `HTTP/1.1 {code} {phrase}\r\n` (the phrase empty for codes without one, as uvicorn writes it).
pub fn status_line(out: &mut Vec<u8>, code: hyper::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n`.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The `date` header line for now (IMF-fixdate), formatted once per second per thread.
pub fn date_line(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != now {
            *cached = (now, imf_fixdate(now));
        }
        header_line(out, b"date", cached.1.as_bytes());
    });
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for `secs` since the Unix epoch.
pub fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::with_capacity(29);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Head, Fault> {
        match scan(raw, 0) {
            Scan::Complete(n) => parse_head(&raw[..n], 8192),
            Scan::Malformed => Err(Fault::Malformed),
            Scan::Partial(_) => panic!("incomplete head"),
        }
    }

    const POST: &[u8] = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n";

    fn with(extra: &[u8]) -> Result<Head, Fault> {
        head(&[POST, extra, b"\r\n"].concat())
    }

    #[test]
    fn plain_heads() {
        let h = with(b"Content-Length: 2\r\nX-A:  a b \r\n").unwrap();
        assert_eq!((h.method, h.framing, h.keep_alive, h.http10), (Method::POST, Framing::Length(2), true, false));
        assert_eq!(h.uri.path(), "/v2/models/m/infer");
        assert_eq!(h.headers["x-a"], "a b");
        assert_eq!(h.counted, "/v2/models/m/infer".len() + (4 + 1 + 4) + (14 + 1 + 4) + (3 + 3 + 4));
        assert_eq!(with(b"Transfer-Encoding: Chunked \r\n").unwrap().framing, Framing::Chunked);
        assert_eq!(with(b"Content-Length: 007\r\n").unwrap().framing, Framing::Length(7));
        assert!(!with(b"Connection: keep-alive, Close\r\n").unwrap().keep_alive);
        assert!(with(b"Expect: 100-Continue\r\n").unwrap().expect_continue);
        let h = head(b"\r\n\r\nGET http://a.example/v2/health/live?x=1 HTTP/1.0\r\n\r\n");
        assert!(h.is_err(), "leading empty lines are skipped by the caller, not here");
        let mut buf = BytesMut::from(&b"\r\n\r\nGET http://a.example/v2/health/live?x=1 HTTP/1.0\r\n\r\n"[..]);
        skip_empty_lines(&mut buf);
        let h = head(&buf).unwrap();
        assert_eq!(
            (h.uri.path(), h.uri.query(), h.http10, h.keep_alive),
            ("/v2/health/live", Some("x=1"), true, false)
        );
        assert!(head(b"GET  /  HTTP/1.1\r\n\r\n").is_ok());
        assert!(head(b"M-SEARCH * HTTP/1.1\r\n\r\n").is_ok());
        assert!(with(b"X-A: caf\xe9\r\n").is_ok(), "obs-text in a value");
    }

    #[test]
    fn refused_heads() {
        let bad: &[&[u8]] = &[
            b"Content-Length: 99999999999999999999999\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: abc\r\n",
            b"Content-Length: +2\r\n",
            b"Content-Length: \r\n",
            b"Content-Length: 2, 2\r\n",
            b"Content-Length: 1 2\r\n",
            b"Content-Length: 2\r\nContent-Length: 3\r\n",
            b"Content-Length: 2\r\nContent-Length: 2\r\n",
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: \r\n",
            b"X-A: a\r\n b\r\n",
            b"X-A: a\x00b\r\n",
            b"X-A: a\x7fb\r\n",
            b"Host : x\r\n",
            b": x\r\n",
            b"X-A x\r\n",
        ];
        for extra in bad {
            assert_eq!(with(extra).unwrap_err(), Fault::Malformed, "{}", String::from_utf8_lossy(extra));
        }
        for raw in [
            &b"GET /v2/health/live HTTP/1.1\nHost: x\n\n"[..],
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"FOO / HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"CONNECT a:80 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            "GET /v2/health/lïve HTTP/1.1\r\n\r\n".as_bytes(),
            b"GET /a\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n X: b\r\n\r\n",
        ] {
            assert_eq!(head(raw).unwrap_err(), Fault::Malformed, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn head_size_is_counted_as_the_guard_counts_it() {
        let target = format!("/{}", "a".repeat(100));
        let raw = format!("GET {target} HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(50));
        let exact = target.len() + 1 + 50 + 4;
        assert!(parse_head(raw.as_bytes(), exact).is_ok());
        assert_eq!(parse_head(raw.as_bytes(), exact - 1).unwrap_err(), Fault::TooLarge);
        let many: String = (0..600).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(16))).collect();
        let raw = format!("POST / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(raw.as_bytes(), 8192).unwrap_err(), Fault::TooLarge);
        assert!(parse_head(raw.as_bytes(), 65536).is_ok(), "600 headers fit a large enough limit");
        let tiny: String = (0..100).map(|i| format!("{}:\r\n", (b'a' + (i % 26) as u8) as char)).collect();
        let raw = format!("GET / HTTP/1.1\r\n{tiny}\r\n");
        assert!(parse_head(raw.as_bytes(), 1 + 100 * 5).is_ok());
        assert_eq!(parse_head(raw.as_bytes(), 100 * 5).unwrap_err(), Fault::TooLarge);
        let url = format!("GET /v2/{} HTTP/1.1\r\n\r\n", "a".repeat(8292));
        assert_eq!(parse_head(url.as_bytes(), 8192).unwrap_err(), Fault::TooLarge);
    }

    #[test]
    fn scanning() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT", 0), Scan::Complete(27));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), Scan::Partial(25));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 25), Scan::Complete(27));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHo", 0), Scan::Partial(18));
        assert_eq!(scan(b"GET / HTTP/1.1\nHost: x\n\n", 0), Scan::Malformed);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nX: a\rb", 0), Scan::Malformed);
    }

    fn decode(framing: Framing, wire: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut h = with(b"Content-Length: 0\r\n").unwrap();
        h.framing = framing;
        let mut decoder = BodyDecoder::new(&h, 8192);
        let mut out = Vec::new();
        // one byte at a time: every state must cope with a partial buffer
        let mut buf = BytesMut::new();
        for b in wire {
            buf.extend_from_slice(&[*b]);
            loop {
                match decoder.next(&mut buf)? {
                    Piece::Data(d) => out.extend_from_slice(&d),
                    Piece::More => break,
                    Piece::End => return Ok(out),
                }
            }
        }
        Err(Fault::Malformed) // incomplete
    }

    #[test]
    fn bodies() {
        assert_eq!(decode(Framing::Length(3), b"abcNEXT").unwrap(), b"abc");
        assert_eq!(decode(Framing::Chunked, b"2\r\n{}\r\nA;x=y\r\n0123456789\r\n0\r\n\r\n").unwrap(), b"{}0123456789");
        assert_eq!(decode(Framing::Chunked, b"0\r\nX-T: 1\r\nX-U:\r\n\r\n").unwrap(), b"");
        assert_eq!(decode(Framing::Chunked, b"000000000000000002\r\n{}\r\n0\r\n\r\n").unwrap_err(), Fault::Malformed);
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"2 \r\n{}\r\n0\r\n\r\n",
            b"0x2\r\n{}\r\n0\r\n\r\n",
            b"2\n{}\r\n0\r\n\r\n",
            b"2\r\n{}XX0\r\n\r\n",
            b"2\r\n{}\r\n0\r\nbad trailer\r\n\r\n",
            b"2\r\n{}\r\n0\r\nX: a\n\r\n",
            b";x\r\n",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                decode(Framing::Chunked, bad).unwrap_err(),
                Fault::Malformed,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut h = with(b"Content-Length: 0\r\n").unwrap();
        h.framing = Framing::Chunked;
        let mut decoder = BodyDecoder::new(&h, h.counted + 20);
        let mut buf = BytesMut::from(&b"0\r\nX-Trailer: 0123456789\r\n\r\n"[..]);
        assert_eq!(decoder.next(&mut buf).unwrap_err(), Fault::TooLarge);
    }

    #[test]
    fn dates() {
        assert_eq!(imf_fixdate(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 GMT");
        assert_eq!(imf_fixdate(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }
}
