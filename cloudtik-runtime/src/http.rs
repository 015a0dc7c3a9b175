//! A minimal HTTP/1.1 client for the runtimes' own REST APIs on the cluster's private
//! network (Spark's master and applications, Ray's dashboard): plain HTTP, `GET`, JSON.
//! Responses with `Content-Length`, chunked bodies and bodies ended by closing the
//! connection are all read.

use std::time::Duration;

use cloudtik_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response body read (the APIs answer with a few kilobytes to megabytes).
const MAX_BODY: usize = 32 << 20;

/// `GET http://<host>:<port><path>` and parses the body as JSON. Errors say which URL
/// and why: connection refused (the service is not up: [`ErrorKind::Transient`]), a
/// status other than 2xx ([`ErrorKind::Unexpected`], with the start of the body), or a
/// body that is not JSON.
pub async fn get_json(host: &str, port: u16, path: &str, timeout: Duration) -> Result<serde_json::Value> {
    let url = format!("http://{host}:{port}{path}");
    let body = tokio::time::timeout(timeout, get(host, port, path))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("GET {url}: no answer within {timeout:?}"),
            )
        })?
        .map_err(|e| e.with_context("url", url.clone()))?;
    serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::Unexpected,
            format!("GET {url}: the answer is not JSON: {e:#}"),
        )
    })
}

async fn get(host: &str, port: u16, path: &str) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| {
        Error::new(
            ErrorKind::Transient,
            format!("cannot connect to {host}:{port}: {e:#}"),
        )
    })?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let io = |e: std::io::Error| {
        Error::new(
            ErrorKind::Transient,
            format!("HTTP I/O with {host}:{port}: {e:#}"),
        )
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_BODY {
            return Err(Error::new(ErrorKind::Unexpected, "the answer is too large"));
        }
        if let Some(done) = complete_length(&raw)
            && raw.len() >= done
        {
            raw.truncate(done);
            break;
        }
    }
    parse_response(&raw)
}

/// The total length of a response with a `Content-Length`, once its head is in.
fn complete_length(raw: &[u8]) -> Option<usize> {
    let head_end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let length = header(head, "content-length")?.parse::<usize>().ok()?;
    Some(head_end + 4 + length)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a complete HTTP/1.1 response, checking its status.
fn parse_response(raw: &[u8]) -> Result<Vec<u8>> {
    let head_end = find(raw, b"\r\n\r\n")
        .ok_or_else(|| Error::new(ErrorKind::Transient, "the connection closed before a full answer"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, "the answer has no HTTP status"))?;
    let mut body = raw[head_end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body);
        let start: String = text.chars().take(200).collect();
        return Err(Error::new(
            if status >= 500 {
                ErrorKind::Transient
            } else {
                ErrorKind::Unexpected
            },
            format!("HTTP {status}: {start}"),
        ));
    }
    Ok(body)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::new(ErrorKind::Unexpected, "a malformed chunked answer");
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(answer: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn reads_length_chunked_and_close_delimited_bodies() {
        let t = Duration::from_secs(5);
        let p = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 1}").await;
        assert_eq!(get_json("127.0.0.1", p, "/", t).await.unwrap()["a"], 1);
        let p = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"b\"\r\n4\r\n: 2}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(get_json("127.0.0.1", p, "/", t).await.unwrap()["b"], 2);
        let p = serve_once(b"HTTP/1.0 200 OK\r\n\r\n[1, 2]").await;
        assert_eq!(get_json("127.0.0.1", p, "/", t).await.unwrap()[1], 2);
    }

    #[tokio::test]
    async fn errors_name_the_url_and_the_status() {
        let t = Duration::from_secs(5);
        let p = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such x").await;
        let err = get_json("127.0.0.1", p, "/json/", t).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err:#}");
        assert!(format!("{err:?}").contains("/json/"), "{err:?}");
        // Nothing listens: a transient error.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = get_json("127.0.0.1", port, "/", t).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
    }
}
