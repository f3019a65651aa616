//! The binary end to end, as the Python router drives it: start it, wait for `/health`, PUT a table, send
//! data requests, read `/stats`. The upstream and the router behind are tiny blocking stubs on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

type Headers = Vec<(String, String)>;
/// A stub's answer to (first line, headers, body).
type Answer = fn(&str, &[(String, String)], &[u8]) -> String;

/// Read one HTTP/1.1 message (head and a Content-Length body) from `reader`: (first line, headers, body).
fn read_message(reader: &mut impl BufRead) -> Option<(String, Headers, Vec<u8>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        read_chunks(reader)?.concat()
    } else {
        let length = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap_or(0));
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some((first.trim_end().to_owned(), headers, body))
}

/// A chunked body's chunks (trailers skipped).
fn read_chunks(reader: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim_end().split(';').next()?, 16).ok()?;
        if size == 0 {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).ok()? <= 2 {
                    return Some(chunks);
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        chunks.push(chunk);
    }
}

/// A keep-alive stub answering every request with `answer(first line, headers, body)`.
fn stub(answer: Answer) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                while let Some((first, headers, body)) = read_message(&mut reader) {
                    let reply = answer(&first, &headers, &body);
                    if writer.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn json_answer(status: &str, body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn upstream(first: &str, headers: &[(String, String)], body: &[u8]) -> String {
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let path = first.split(' ').nth(1).unwrap_or("");
    let body = format!(r#"{{"path":"{path}","headers":"{}","bytes":{}}}"#, names.join(","), body.len());
    json_answer("200 OK", &body, "x-secret: 1\r\ninference-header-content-length: 3\r\n")
}

fn fallback(first: &str, _: &[(String, String)], _: &[u8]) -> String {
    json_answer("200 OK", &format!(r#"{{"fallback":"{first}"}}"#), "")
}

/// One request on a fresh connection: (status, headers, body).
fn send(stream: &mut (impl Read + Write), request: &str) -> (u16, Headers, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let (first, headers, body) = read_message(&mut BufReader::new(stream)).expect("an answer");
    let status = first.split(' ').nth(1).unwrap().parse().unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn post(port: u16, path: &str, extra: &str, body: &str) -> (u16, Headers, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    send(&mut stream, &request)
}

fn control(socket: &PathBuf, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: c\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let (status, _, body) = send(&mut stream, &request);
    (status, body)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary, started as the Python router starts it, its control socket answering.
struct Fastpath {
    _running: Running,
    socket: PathBuf,
    port: u16,
    dir: PathBuf,
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fastpath {
    fn start(behind: u16, tag: &str) -> Fastpath {
        let dir = std::env::temp_dir().join(format!("fastpath-e2e-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_paretoserve-fastpath"))
            .args(["--listen", "127.0.0.1:0", "--fallback", &format!("http://127.0.0.1:{behind}"), "--control"])
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = Running(child);
        let started = Instant::now();
        let health = loop {
            if let Ok(mut stream) = UnixStream::connect(&socket) {
                break send(&mut stream, "GET /health HTTP/1.1\r\nhost: c\r\n\r\n").2;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no control socket");
            thread::sleep(Duration::from_millis(20));
        };
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!((&health["table"], &health["draining"]), (&false.into(), &false.into()));
        let port = health["listen"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
        Fastpath { _running: running, socket, port, dir }
    }

    fn control(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        control(&self.socket, method, path, body)
    }
}

/// A table with `models` and small limits, `changes` applied on top.
fn table(models: serde_json::Value, changes: serde_json::Value) -> String {
    let mut table = serde_json::json!({
        "pipeline": "p", "models": models,
        "deadline_header": "x-deadline", "default_deadline_ms": null, "max_deadline_ms": 600000,
        "max_body_bytes": 100, "max_upstream_bytes": 1000, "max_header_bytes": 16384, "read_timeout_s": 10,
        "keep_alive_s": 75, "max_requests_per_connection": 1000, "limit_concurrency": 1024, "queue_concurrency": 4,
        "queue_max_size": 16, "connect_ms": 1000, "read_ms": 5000, "write_ms": 5000, "pool_ms": 5000,
        "max_keepalive_connections": 8, "keepalive_expiry_s": 30});
    for (key, value) in changes.as_object().unwrap() {
        table[key] = value.clone();
    }
    table.to_string()
}

#[test]
fn serves_the_proxy_path_and_passes_the_rest() {
    let up = stub(upstream);
    let behind = stub(fallback);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed at once
    let fastpath = Fastpath::start(behind, "serves");
    let (port, socket) = (fastpath.port, fastpath.socket.clone());

    // Before a table, everything goes behind.
    let (status, _, body) = post(port, "/v2/models/m/infer", "", "{}");
    assert_eq!((status, body.as_str()), (200, r#"{"fallback":"POST /v2/models/m/infer HTTP/1.1"}"#));

    let models =
        serde_json::json!({"m": [format!("http://127.0.0.1:{up}/pre/")], "gone": [format!("http://127.0.0.1:{dead}")]});
    let (status, body) = control(&socket, "PUT", "/table", r#"{"pipeline": 1}"#);
    assert_eq!(status, 400);
    assert!(body.contains(r#""field":"pipeline""#), "{body}");
    assert_eq!(control(&socket, "PUT", "/table", &table(models, serde_json::json!({}))).0, 204);

    // The fast path: only the allowed headers travel, only three come back.
    let (status, headers, body) = post(port, "/v2/models/m/infer?x=1", "x-other: 1\r\n", "{}");
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"path":"/pre/v2/models/m/infer","headers":"host,content-type,content-length","bytes":2}"#);
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"inference-header-content-length") && !names.contains(&"x-secret"), "{names:?}");
    let (_, _, body) = post(port, "/v2/models/m/versions/7/infer", "", "{}");
    assert!(body.starts_with(r#"{"path":"/pre/v2/models/m/versions/7/infer""#), "{body}");

    // The checks of model_infer, in its words.
    let (status, _, body) = post(port, "/v2/models/m/infer", "x-deadline: 1\r\nx-deadline: 2\r\n", "{}");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":"header x-deadline: given 2 times","reason":"bad_request","status":400,"stage":"proxy"}"#
    );
    let (status, _, body) = post(port, "/v2/models/m/infer", "x-deadline: -5\r\n", "{}");
    assert_eq!(status, 400);
    assert!(body.contains("must be milliseconds as digits with up to 3 decimals (e.g. 250 or 12.5), got '-5'"));
    let (status, headers, body) = post(port, "/v2/models/m/infer", "", &"a".repeat(101));
    assert_eq!(status, 413);
    assert!(headers.contains(&("connection".into(), "close".into())));
    assert!(body.contains("the request body (101 bytes) is over the limit of 100 bytes"), "{body}");
    let (status, _, body) = post(port, "/v2/models/gone/infer", "", "{}");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"error":"ConnectError: a replica of model 'gone' could not be reached","reason":"upstream_unavailable","status":503,"stage":"proxy","model":"gone"}"#
    );

    // Unknown models and the pipeline's own name go behind.
    assert!(post(port, "/v2/models/other/infer", "", "{}").2.contains("fallback"));
    assert!(post(port, "/v2/models/p/infer", "", "{}").2.contains("fallback"));

    let (status, stats) = control(&socket, "GET", "/stats", "");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["proxied"]["m"]["rows"], 2);
    assert_eq!(stats["proxied"]["m"]["duration"]["count"], 2);
    assert_eq!(stats["proxied"]["gone"]["duration"]["count"], 1);
    assert_eq!(stats["errors"]["bad_request"], 2);
    assert_eq!(stats["errors"]["payload_too_large"], 1);
    assert_eq!(stats["errors"]["upstream_unavailable"], 1);
    assert_eq!(stats["upstream_failures"]["gone"]["upstream_unavailable"], 1);
    assert_eq!(stats["fallback_requests"], 3);
    assert_eq!(stats["requests"], 9);
    assert_eq!(stats["queue_length"], 0);
}

/// What a generic stub does with one request: write its answer on `stream` (`count`: the requests this
/// connection carried, this one included); `false` closes the connection.
type Handler = dyn Fn(&mut TcpStream, usize, &str, &[u8]) -> bool + Send + Sync;

fn stub_with(handle: Arc<Handler>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut count = 0;
                while let Some((first, _, body)) = read_message(&mut reader) {
                    count += 1;
                    if !handle(&mut writer, count, &first, &body) {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(stream)
}

/// Write `bytes` on the connection (ignoring a refusal that came first).
fn write(conn: &mut BufReader<TcpStream>, bytes: &[u8]) {
    let _ = conn.get_mut().write_all(bytes);
}

/// The next answer on the connection: (status, headers, body).
fn answer(conn: &mut BufReader<TcpStream>) -> (u16, Headers, Vec<u8>) {
    let (first, headers, body) = read_message(conn).expect("an answer");
    (first.split(' ').nth(1).unwrap().parse().unwrap(), headers, body)
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The connection was closed by the fast path (end of stream within the read timeout).
fn closed(conn: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n")
}

fn echo_behind() -> (u16, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let port = stub_with(Arc::new(move |stream: &mut TcpStream, _, first: &str, body: &[u8]| {
        counter.fetch_add(1, SeqCst);
        let body = format!(r#"{{"fallback":"{first}","bytes":{}}}"#, body.len());
        stream.write_all(json_answer("200 OK", &body, "").as_bytes()).is_ok()
    }));
    (port, seen)
}

#[test]
fn refuses_malformed_or_oversized_http_itself() {
    let up = stub(upstream);
    let (behind, seen) = echo_behind();
    let fastpath = Fastpath::start(behind, "strict");
    let models = serde_json::json!({"m": [format!("http://127.0.0.1:{up}")]});
    let limits = serde_json::json!({"max_header_bytes": 1024});
    assert_eq!(fastpath.control("PUT", "/table", &table(models, limits)).0, 204);
    let pipe = "POST /v2/pipelines/p/infer HTTP/1.1\r\nhost: t\r\n";
    let fast = "POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\n";
    let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("{pipe}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"), 400, "bad_request"),
        (format!("{fast}transfer-encoding: gzip\r\n\r\nabc"), 400, "bad_request"),
        (format!("{pipe}transfer-encoding: identity\r\ncontent-length: 2\r\n\r\n{{}}"), 400, "bad_request"),
        (format!("{pipe}content-length: 2\r\ncontent-length: 3\r\n\r\n{{}}x"), 400, "bad_request"),
        (format!("{fast}content-length: +2\r\n\r\n{{}}"), 400, "bad_request"),
        (format!("{pipe}content-length: 99999999999999999999999\r\n\r\n"), 400, "bad_request"),
        (format!("{pipe}x-a: a\r\n b\r\ncontent-length: 2\r\n\r\n{{}}"), 400, "bad_request"),
        (format!("{pipe}x-a: a\0b\r\ncontent-length: 2\r\n\r\n{{}}"), 400, "bad_request"),
        ("GET /v2/health/live HTTP/1.1\nhost: x\n\n".to_owned(), 400, "bad_request"),
        ("GET /v2/health/live HTTP/1.1\r\nhost : x\r\n\r\n".to_owned(), 400, "bad_request"),
        ("GARBAGE\r\n\r\n".to_owned(), 400, "bad_request"),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(), 400, "bad_request"),
        ("FOO / HTTP/1.1\r\n\r\n".to_owned(), 400, "bad_request"),
        (format!("{pipe}transfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"), 400, "bad_request"),
        (format!("{fast}transfer-encoding: chunked\r\n\r\n2\r\n{{}}XX0\r\n\r\n"), 400, "bad_request"),
        (format!("{pipe}x-big: {}\r\n\r\n", "a".repeat(2000)), 431, "headers_too_large"),
        (format!("{pipe}{many}\r\n"), 431, "headers_too_large"),
        (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1100)), 431, "headers_too_large"),
        (format!("{pipe}expect: 100-continue\r\ncontent-length: 101\r\n\r\n"), 413, "payload_too_large"),
        (format!("{fast}expect: 100-continue\r\ncontent-length: 101\r\n\r\n"), 413, "payload_too_large"),
        ("GET /v2/health/live HTTP/1.1\r\ncontent-length: 101\r\n\r\n".to_owned(), 413, "payload_too_large"),
        (
            format!("{pipe}transfer-encoding: chunked\r\n\r\n65\r\n{}\r\n0\r\n\r\n", "a".repeat(101)),
            413,
            "payload_too_large",
        ),
        (
            format!("{fast}transfer-encoding: chunked\r\n\r\n65\r\n{}\r\n0\r\n\r\n", "a".repeat(101)),
            413,
            "payload_too_large",
        ),
    ];
    for (raw, status, reason) in &cases {
        let mut conn = connect(fastpath.port);
        write(&mut conn, raw.as_bytes());
        let (got, headers, body) = answer(&mut conn); // the first line: never `100 Continue`
        let shown = raw.escape_debug().to_string();
        assert_eq!(got, *status, "{shown}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"), "{shown}");
        assert_eq!(header(&headers, "connection"), Some("close"), "{shown}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (body["status"].as_u64(), body["reason"].as_str()),
            (Some(*status as u64), Some(*reason)),
            "{shown}"
        );
        assert_eq!(body.get("stage").is_some(), raw.starts_with(fast) && *status == 413, "{shown}");
        assert!(closed(&mut conn), "{shown}");
    }
    assert_eq!(seen.load(SeqCst), 0, "nothing reached the router behind");
    let (_, stats) = fastpath.control("GET", "/stats", "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["errors"]["bad_request"], 15);
    assert_eq!(stats["errors"]["headers_too_large"], 3);
    assert_eq!(stats["errors"]["payload_too_large"], 5);
}

#[test]
fn chunked_bodies_pipelining_and_the_connection_quota() {
    let up = stub(upstream);
    let (behind, seen) = echo_behind();
    let fastpath = Fastpath::start(behind, "pipelined");
    let models = serde_json::json!({"m": [format!("http://127.0.0.1:{up}")]});
    let limits = serde_json::json!({"max_requests_per_connection": 3});
    assert_eq!(fastpath.control("PUT", "/table", &table(models, limits)).0, 204);
    let chunked = "transfer-encoding: chunked\r\n\r\n1\r\n{\r\n1;ext=1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n";
    let pipelined = [
        format!("POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\n{chunked}"),
        format!("POST /v2/pipelines/p/infer HTTP/1.1\r\nhost: t\r\n{chunked}"),
        get("/v2/health/live"),
        get("/never/read"),
    ]
    .concat();
    let mut conn = connect(fastpath.port);
    write(&mut conn, pipelined.as_bytes());
    let (status, headers, body) = answer(&mut conn);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"path":"/v2/models/m/infer","headers":"host,content-length","bytes":2}"#
    );
    assert_eq!(header(&headers, "connection"), None);
    let (status, headers, body) = answer(&mut conn);
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), r#"{"fallback":"POST /v2/pipelines/p/infer HTTP/1.1","bytes":2}"#);
    assert_eq!(header(&headers, "connection"), None);
    // the third answer on the connection, whoever gave it, closes it (the fourth request is never served)
    let (status, headers, _) = answer(&mut conn);
    assert_eq!((status, header(&headers, "connection")), (200, Some("close")));
    assert!(closed(&mut conn));
    assert_eq!(seen.load(SeqCst), 2);
    // a body the answer did not need is read and dropped: the connection goes on
    let mut conn = connect(fastpath.port);
    let bad_deadline = "POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\nx-deadline: x\r\ncontent-length: 2\r\n\r\n{}";
    write(&mut conn, [bad_deadline, &get("/v2/health/live")].concat().as_bytes());
    assert_eq!(answer(&mut conn).0, 400);
    let (status, _, body) = answer(&mut conn);
    assert_eq!(
        (status, String::from_utf8(body).unwrap().as_str()),
        (200, r#"{"fallback":"GET /v2/health/live HTTP/1.1","bytes":0}"#)
    );
}

#[test]
fn the_routers_own_connection_quota_is_not_passed_on() {
    // The router behind closes its connections after 3 requests (its max_requests_per_connection, the table's)
    // and after /closing; the first is about the connection from the fast path, not the client's.
    let behind = stub_with(Arc::new(|stream: &mut TcpStream, count: usize, first: &str, _: &[u8]| {
        let close = count == 3 || first.contains("/closing");
        let extra = if close { "connection: close\r\n" } else { "" };
        let answered = stream.write_all(json_answer("200 OK", &format!(r#"{{"count":{count}}}"#), extra).as_bytes());
        answered.is_ok() && !close
    }));
    let fastpath = Fastpath::start(behind, "quota");
    let limits = serde_json::json!({"max_requests_per_connection": 3});
    assert_eq!(fastpath.control("PUT", "/table", &table(serde_json::json!({}), limits)).0, 204);
    let mut a = connect(fastpath.port);
    for count in 1..=2 {
        write(&mut a, get("/a").as_bytes());
        let (status, headers, body) = answer(&mut a);
        assert_eq!((status, header(&headers, "connection")), (200, None));
        assert_eq!(String::from_utf8(body).unwrap(), format!(r#"{{"count":{count}}}"#));
    }
    let mut b = connect(fastpath.port);
    write(&mut b, get("/b").as_bytes());
    let (status, headers, body) = answer(&mut b);
    assert_eq!((status, header(&headers, "connection")), (200, None), "the router's quota, not the client's");
    assert_eq!(String::from_utf8(body).unwrap(), r#"{"count":3}"#);
    write(&mut b, get("/closing").as_bytes());
    let (status, headers, _) = answer(&mut b);
    assert_eq!((status, header(&headers, "connection")), (200, Some("close")));
    assert!(closed(&mut b));
}

#[test]
fn drains_on_request() {
    let up = stub(upstream);
    let (behind, _) = echo_behind();
    let fastpath = Fastpath::start(behind, "drain");
    let models = serde_json::json!({"m": [format!("http://127.0.0.1:{up}")]});
    assert_eq!(fastpath.control("PUT", "/table", &table(models, serde_json::json!({}))).0, 204);
    let infer = "POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}";
    let mut kept_behind = connect(fastpath.port);
    let mut kept_fast = connect(fastpath.port);
    let mut idle = connect(fastpath.port);
    for (conn, request) in [(&mut kept_behind, get("/a")), (&mut kept_fast, infer.to_owned()), (&mut idle, get("/b"))] {
        write(conn, request.as_bytes());
        let (status, headers, _) = answer(conn);
        assert_eq!((status, header(&headers, "connection")), (200, None));
    }
    let mut opened = connect(fastpath.port); // accepted before the drain, no request yet

    assert_eq!(fastpath.control("GET", "/drain", ""), (405, fastpath.control("GET", "/drain", "").1));
    assert_eq!(fastpath.control("POST", "/drain", "").0, 204);
    let (_, health) = fastpath.control("GET", "/health", "");
    assert!(health.contains(r#""draining":true"#), "{health}");
    // every answer closes its connection: kept-alive ones, fast path and behind alike, new ones
    for (conn, request) in [(&mut kept_behind, get("/a")), (&mut kept_fast, infer.to_owned()), (&mut opened, get("/c"))]
    {
        write(conn, request.as_bytes());
        let (status, headers, _) = answer(conn);
        assert_eq!((status, header(&headers, "connection")), (200, Some("close")));
        assert!(closed(conn));
    }
    let mut fresh = connect(fastpath.port);
    write(&mut fresh, infer.as_bytes());
    let (status, headers, _) = answer(&mut fresh);
    assert_eq!((status, header(&headers, "connection")), (200, Some("close")));

    // idle kept-alive connections stay open (as the Python router leaves them) unless asked to close
    assert_eq!(fastpath.control("POST", "/drain?idle=close", "").0, 204);
    let started = Instant::now();
    assert!(closed(&mut idle));
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut after = connect(fastpath.port); // still accepted and served
    write(&mut after, get("/d").as_bytes());
    let (status, headers, _) = answer(&mut after);
    assert_eq!((status, header(&headers, "connection")), (200, Some("close")));
}

#[test]
fn relays_server_sent_events_as_they_come() {
    let gate = Arc::new(AtomicUsize::new(0));
    let seen = gate.clone();
    let behind = stub_with(Arc::new(move |stream: &mut TcpStream, _, _: &str, _: &[u8]| {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let event = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
        let mut ok = stream.write_all(format!("{head}{}", event("data: 1\n\n")).as_bytes()).is_ok();
        let waited = Instant::now();
        while seen.load(SeqCst) == 0 && waited.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5)); // the second event only once the client has the first
        }
        ok &= stream.write_all(format!("{}0\r\n\r\n", event("data: 2\n\n")).as_bytes()).is_ok();
        ok
    }));
    let fastpath = Fastpath::start(behind, "sse");
    let mut conn = connect(fastpath.port);
    write(&mut conn, "POST /v2/models/x/generate_stream HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}".as_bytes());
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        headers.push(line.trim_end().to_ascii_lowercase());
    }
    assert!(headers.contains(&"transfer-encoding: chunked".to_owned()), "{headers:?}");
    let started = Instant::now();
    let mut size = String::new();
    conn.read_line(&mut size).unwrap();
    let mut first = vec![0; usize::from_str_radix(size.trim_end(), 16).unwrap() + 2];
    conn.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"data: 1\n\n\r\n");
    assert!(started.elapsed() < Duration::from_secs(4), "the first event came alone");
    gate.store(1, SeqCst);
    assert_eq!(read_chunks(&mut conn).unwrap().concat(), b"data: 2\n\n");
}

#[test]
fn sigterm_closes_idle_connections_and_exits() {
    let (behind, _) = echo_behind();
    let mut fastpath = Fastpath::start(behind, "sigterm");
    let mut kept = connect(fastpath.port);
    write(&mut kept, get("/a").as_bytes());
    assert_eq!(answer(&mut kept).0, 200);
    let mut silent = connect(fastpath.port);
    thread::sleep(Duration::from_millis(50)); // accepted
    let pid = fastpath._running.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    assert!(closed(&mut kept) && closed(&mut silent));
    let status = fastpath._running.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[test]
fn large_bodies_both_ways() {
    let up = stub(upstream);
    let behind = stub_with(Arc::new(|stream: &mut TcpStream, _, first: &str, body: &[u8]| {
        let big = first.contains("/big");
        let answer = if big { "x".repeat(3 << 20) } else { format!(r#"{{"bytes":{}}}"#, body.len()) };
        stream.write_all(json_answer("200 OK", &answer, "").as_bytes()).is_ok()
    }));
    let fastpath = Fastpath::start(behind, "large");
    let models = serde_json::json!({"m": [format!("http://127.0.0.1:{up}")]});
    let limits = serde_json::json!({"max_body_bytes": 8 << 20, "max_upstream_bytes": 8 << 20});
    assert_eq!(fastpath.control("PUT", "/table", &table(models, limits)).0, 204);
    let body = "y".repeat(5 << 20);
    let mut conn = connect(fastpath.port);
    let head = format!("POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n", body.len());
    write(&mut conn, head.as_bytes());
    for piece in body.as_bytes().chunks(300_000) {
        write(&mut conn, piece);
    }
    let (status, _, answer_body) = answer(&mut conn);
    assert_eq!(status, 200);
    assert!(String::from_utf8(answer_body).unwrap().ends_with(&format!(r#""bytes":{}}}"#, 5 << 20)));
    // chunked, behind, on the same connection
    write(&mut conn, b"POST /v2/pipelines/p/infer HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n");
    for piece in body.as_bytes().chunks(1 << 20) {
        write(&mut conn, format!("{:x}\r\n", piece.len()).as_bytes());
        write(&mut conn, piece);
        write(&mut conn, b"\r\n");
    }
    write(&mut conn, b"0\r\n\r\n");
    let (status, _, answer_body) = answer(&mut conn);
    assert_eq!((status, String::from_utf8(answer_body).unwrap()), (200, format!(r#"{{"bytes":{}}}"#, 5 << 20)));
    write(&mut conn, get("/big").as_bytes());
    let (status, headers, answer_body) = answer(&mut conn);
    assert_eq!((status, answer_body.len(), header(&headers, "connection")), (200, 3 << 20, None));
}
