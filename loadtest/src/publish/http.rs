//! HTTP publish lane: one keep-alive HTTP/1.1 connection to
//! `POST /api/publish`, one request at a time so the channels it owns keep
//! their order. A broken connection is reopened on the next event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Due, LaneResult, PublishError, Seqs};
use crate::protocol::Payload;
use crate::safety::HttpBase;

/// How long one publish request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected HTTP lane.
pub(crate) struct HttpLane {
    base: HttpBase,
    auth: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

async fn open(base: &HttpBase) -> Result<SendRequest<Full<Bytes>>, PublishError> {
    let connect_err = |source| PublishError::Connect {
        addr: base.addr.to_string(),
        source,
    };
    let stream = TcpStream::connect(base.addr).await.map_err(connect_err)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What one request returned: the status, or a failure kind.
enum Sent {
    Status(u16, Bytes),
    Failed(String),
}

impl HttpLane {
    pub(crate) async fn connect(base: &HttpBase, api_key: &str) -> Result<HttpLane, PublishError> {
        let sender = open(base).await?;
        Ok(HttpLane {
            base: base.clone(),
            auth: format!("Bearer {api_key}"),
            sender: Some(sender),
        })
    }

    async fn post(&mut self, body: String) -> Sent {
        if self.sender.is_none() {
            match open(&self.base).await {
                Ok(s) => self.sender = Some(s),
                Err(_) => return Sent::Failed("http_connect".into()),
            }
        }
        let Some(sender) = self.sender.as_mut() else {
            return Sent::Failed("http_connect".into());
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/publish")
            .header(HOST, &self.base.authority)
            .header(AUTHORIZATION, &self.auth)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else {
            return Sent::Failed("http_request".into());
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        match result {
            Ok(Ok((status, body))) => Sent::Status(status, body),
            Ok(Err(_)) => {
                self.sender = None;
                Sent::Failed("http_io".into())
            }
            Err(_) => {
                self.sender = None;
                Sent::Failed("http_timeout".into())
            }
        }
    }

    /// Publishes to a room nobody joins, to prove address and key work.
    pub(crate) async fn preflight(&mut self) -> Result<(), PublishError> {
        let body = r#"{"channel":"room:lt-preflight","data":{"preflight":true}}"#.to_owned();
        match self.post(body).await {
            Sent::Status(s, _) if (200..300).contains(&s) => Ok(()),
            Sent::Status(status, body) => Err(PublishError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
            Sent::Failed(kind) => Err(PublishError::Connect {
                addr: self.base.addr.to_string(),
                source: std::io::Error::other(kind),
            }),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Due>,
        channels: Arc<Vec<String>>,
        pad: usize,
        id: u32,
    ) -> LaneResult {
        let mut seqs = Seqs::default();
        let mut out = LaneResult {
            errors: BTreeMap::new(),
            ..LaneResult::default()
        };
        while let Some(due) = rx.recv().await {
            let seq = seqs.next(due.channel);
            let payload = Payload {
                ts: crate::now_micros(),
                seq,
                publisher: id,
                step: due.step,
            };
            let body = format!(
                r#"{{"channel":"{}","data":{}}}"#,
                channels[due.channel],
                payload.to_json(pad)
            );
            match self.post(body).await {
                Sent::Status(s, _) if (200..300).contains(&s) => out.sent += 1,
                Sent::Status(s, _) => {
                    out.failed += 1;
                    seqs.failed(due.channel, seq);
                    *out.errors.entry(format!("http_{s}")).or_default() += 1;
                }
                Sent::Failed(kind) => {
                    out.failed += 1;
                    seqs.failed(due.channel, seq);
                    *out.errors.entry(kind).or_default() += 1;
                }
            }
        }
        out.finals = seqs.into_finals();
        out
    }
}
