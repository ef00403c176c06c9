//! Plain HTTP/1.1 on loopback with std only: a webhook receiver that records
//! what it is sent ([`Webhook`]), and a GET client ([`http_get`]) for
//! leakscope's /metrics and /health and Prometheus' API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one connection may take to send its request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger requests are refused (413).
const MAX_BODY: usize = 16 << 20;

/// One request the webhook received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body parsed as JSON, or why it is not JSON.
    pub json: Result<Value, String>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP server on 127.0.0.1 (a free port) that answers every POST with
/// 200 (anything else with 405) and records every request it could read.
/// Stopped when dropped.
pub struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook server");
        let addr = listener.local_addr().expect("webhook address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, stop2) = (received.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                thread::spawn(move || serve(conn, &rec));
            }
        });
        Webhook {
            addr,
            received,
            stop,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The parsed JSON bodies of the POSTs received so far.
    pub fn json_bodies(&self) -> Vec<(Instant, Value)> {
        self.received()
            .into_iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| r.json.ok().map(|v| (r.at, v)))
            .collect()
    }

    /// Polls until some received POST's JSON body satisfies `pred`; returns it
    /// with its arrival time, or None after `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self.json_bodies().into_iter().find(|(_, v)| pred(v)) {
                return Some(hit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request received, one line each, for failure messages.
    pub fn describe(&self) -> String {
        let all = self.received();
        if all.is_empty() {
            return "(the webhook received nothing)".into();
        }
        all.iter()
            .map(|r| format!("{} {} {}", r.method, r.path, r.body_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop up so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, received: &Mutex<Vec<Received>>) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    // Keep-alive: serve requests until the client closes or an error.
    loop {
        let (status, close) = match read_request(&mut reader) {
            Ok(None) => return,
            Ok(Some(req)) => {
                let status = if req.method == "POST" { 200 } else { 405 };
                let close = req
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                received.lock().unwrap().push(req);
                (status, close)
            }
            Err(RequestError::TooLarge) => (413, true),
            Err(RequestError::Bad(_)) => (400, true),
        };
        let reason = match status {
            200 => "OK",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            _ => "Bad Request",
        };
        let conn_header = if close { "close" } else { "keep-alive" };
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: {conn_header}\r\n\r\n");
        if out.write_all(resp.as_bytes()).is_err() || out.flush().is_err() || close {
            return;
        }
    }
}

enum RequestError {
    TooLarge,
    Bad(#[allow(dead_code)] String),
}

/// Reads one request; Ok(None) if the connection closed before one started.
fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<Received>, RequestError> {
    let bad = |e: std::io::Error| RequestError::Bad(e.to_string());
    let mut line = String::new();
    if r.read_line(&mut line).map_err(bad)? == 0 {
        return Ok(None);
    }
    let at = Instant::now();
    let mut words = line.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Err(RequestError::Bad(format!("request line {line:?}")));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let headers = read_headers(r).map_err(RequestError::Bad)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(r, MAX_BODY).map_err(|e| {
            if e == "too large" {
                RequestError::TooLarge
            } else {
                RequestError::Bad(e)
            }
        })?
    } else {
        let len: usize = match header("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| RequestError::Bad(format!("Content-Length {v:?}")))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(RequestError::TooLarge);
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(bad)?;
        body
    };
    let json = serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)));
    Ok(Some(Received {
        at,
        method,
        path,
        headers,
        body,
        json,
    }))
}

fn read_headers(r: &mut impl BufRead) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in the headers".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(headers);
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("header line {line:?}"));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

/// A chunked body (RFC 9112, 7.1), trailers skipped.
fn read_chunked(r: &mut impl BufRead, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("chunk size line {line:?}"))?;
        if size == 0 {
            read_headers(r)?; // trailers
            return Ok(body);
        }
        if body.len() + size > max {
            return Err("too large".into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(|e| e.to_string())?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).map_err(|e| e.to_string())?;
    }
}

/// A response to [`http_get`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET http://<addr><path_and_query>` with a bounded wait; the body read to
/// the end (Connection: close), chunked bodies decoded. Err describes why it
/// failed (connection refused, timeout, malformed response).
pub fn http_get(addr: &str, path_and_query: &str, timeout: Duration) -> Result<Response, String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let mut conn = TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
    conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let req = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .map_err(|e| format!("send GET {path_and_query} to {addr}: {e}"))?;
    let mut r = BufReader::new(conn);
    let mut status_line = String::new();
    r.read_line(&mut status_line)
        .map_err(|e| format!("GET {path_and_query} from {addr}: reading the status line: {e}"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path_and_query} from {addr}: bad status line {status_line:?}"))?;
    let headers = read_headers(&mut r).map_err(|e| format!("GET {path_and_query} from {addr}: {e}"))?;
    let resp_header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if resp_header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        read_chunked(&mut r, usize::MAX).map_err(|e| format!("GET {path_and_query} from {addr}: chunked body: {e}"))?
    } else if let Some(len) = resp_header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        let mut body = vec![0; len];
        r.read_exact(&mut body)
            .map_err(|e| format!("GET {path_and_query} from {addr}: body of {len} bytes: {e}"))?;
        body
    } else {
        let mut body = Vec::new();
        r.read_to_end(&mut body)
            .map_err(|e| format!("GET {path_and_query} from {addr}: body: {e}"))?;
        body
    };
    let body =
        String::from_utf8(body).map_err(|e| format!("GET {path_and_query} from {addr}: body is not UTF-8: {e}"))?;
    Ok(Response { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POST with Content-Length and with chunked encoding, on one keep-alive
    /// connection; then a GET (405, recorded).
    #[test]
    fn records_posts() {
        let hook = Webhook::start();
        let mut c = TcpStream::connect(hook.addr()).unwrap();
        let body = r#"{"a":1}"#;
        write!(
            c,
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        write!(
            c,
            "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{{\"b\"\r\n3\r\n:2}}\r\n0\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
        let got = hook
            .wait_for(|v| v["b"] == 2, Duration::from_secs(5))
            .expect("chunked POST");
        assert_eq!(got.1, serde_json::json!({"b": 2}));
        let bodies: Vec<Value> = hook.json_bodies().into_iter().map(|(_, v)| v).collect();
        assert_eq!(bodies, vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]);
        let all = hook.received();
        assert!(all[0].at <= all[1].at);
        assert_eq!(all[0].path, "/hook");

        let resp = http_get(&hook.addr().to_string(), "/x", Duration::from_secs(5)).unwrap();
        assert_eq!(resp.status, 405);
        assert_eq!(hook.received().len(), 3);
        assert!(hook.json_bodies().len() == 2);
    }
}
