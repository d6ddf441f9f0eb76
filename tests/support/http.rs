//! A minimal HTTP/1.1 client for black-box tests: one request per call,
//! reading exactly `content-length` bytes of body; and the publish API call.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a response may take before the test fails.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);

/// One request on a new connection with `Connection: close`; (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    http_on(&mut stream, method, path, headers, body, true).await
}

/// `POST /api/publish` of `data` to `channel` with `api_key`; the status code.
pub async fn publish(
    addr: std::net::SocketAddr,
    api_key: &str,
    channel: &str,
    data: serde_json::Value,
) -> u16 {
    let body = serde_json::json!({"channel": channel, "data": data}).to_string();
    let auth = format!("Bearer {api_key}");
    http(
        addr,
        "POST",
        "/api/publish",
        &[("authorization", &auth)],
        &body,
    )
    .await
    .0
}

/// One request on an open connection (kept alive unless `close`).
pub async fn http_on(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    close: bool,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(RESPONSE_DEADLINE, stream.read(&mut chunk))
            .await
            .expect("http response in time")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (
                    status,
                    String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string(),
                );
            }
        }
        if n == 0 {
            panic!(
                "connection closed before a full response: {}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
