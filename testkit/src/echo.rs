//! The echo upstream: answers every method and path with 200 and the JSON
//! `{"method","path","headers"}` of the request it got (header names lowercase, repeated
//! headers joined), so a test sees exactly what Envoy and portcullis passed upstream. It
//! also logs every request, upgrades included, for the tests to read.
//!
//! A WebSocket upgrade is accepted (101); the first message is the echo JSON, then every
//! text or binary message is sent back, pings are answered and a close is returned. Any
//! other upgrade is answered like a plain request. It serves plain HTTP, or HTTPS with a
//! certificate of the test CA.
//!
//! It runs in process, on a thread of its own with its own runtime, so a test that blocks
//! its own thread (waiting on a node helper, say) never stalls the upstream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// One request as the echo upstream saw it.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Lowercase header names; repeated headers joined with ", " (`cookie` with "; ").
    pub headers: BTreeMap<String, String>,
}

impl EchoRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn host(&self) -> &str {
        self.header("host").unwrap_or("")
    }

    /// Parses the echo's JSON (`{"method","path","headers"}`), as it answers it.
    pub fn from_json(v: &Value) -> Self {
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("echo record without {key}: {v}"))
                .to_string()
        };
        let headers = v["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("echo record without headers: {v}"))
            .iter()
            .map(|(k, val)| {
                let val = match val {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.to_ascii_lowercase(), val)
            })
            .collect();
        Self {
            method: text("method"),
            path: text("path"),
            headers,
        }
    }

    fn to_json(&self) -> Value {
        json!({"method": self.method, "path": self.path, "headers": self.headers})
    }
}

/// The requests received, and whether to keep them (see [`Echo::keep_requests`]).
#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<EchoRequest>>,
    forget: AtomicBool,
}

type Log = Arc<Recorder>;

/// A running echo upstream (plain HTTP, and HTTPS when asked), stopped on drop.
pub struct Echo {
    /// The plain-HTTP address.
    pub addr: SocketAddr,
    /// The HTTPS address, if started with a certificate.
    pub tls_addr: Option<SocketAddr>,
    log: Log,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Binds `addr` (port 0 for any), and `tls_addr` with the certificate and key files when
    /// given, and serves until dropped.
    pub fn start(
        addr: SocketAddr,
        tls: Option<(SocketAddr, &Path, &Path)>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let plain =
            std::net::TcpListener::bind(addr).with_context(|| format!("echo: bind {addr}"))?;
        plain.set_nonblocking(true)?;
        let tls = match tls {
            Some((addr, cert, key)) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("echo: bind {addr}"))?;
                l.set_nonblocking(true)?;
                Some((l, tls_config(cert, key)?))
            }
            None => None,
        };
        let log = Log::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Router::new().fallback(echo).with_state(log.clone());
        let addr = plain.local_addr()?;
        let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("echo runtime");
                runtime.block_on(async move {
                    let plain = tokio::net::TcpListener::from_std(plain).expect("echo listener");
                    let plain_app = app.clone();
                    let serve_plain = async move {
                        let _ = axum::serve(plain, plain_app).await;
                    };
                    let serve_tls = async move {
                        match tls {
                            Some((l, config)) => serve_https(l, config, app).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = serve_plain => {}
                        _ = serve_tls => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            tls_addr,
            log,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<EchoRequest> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Keeps every request from now on (the default), or none: under sustained load (the
    /// soak) the record would grow without bound.
    pub fn keep_requests(&self, keep: bool) {
        self.log.forget.store(!keep, Ordering::Relaxed);
    }

    /// The log as JSON lines, for failure messages.
    pub fn log_lines(&self) -> String {
        self.requests()
            .iter()
            .map(|r| r.to_json().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

async fn serve_https(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("echo TLS listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

fn describe(method: &str, path: &str, headers: &HeaderMap) -> EchoRequest {
    let mut joined: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let sep = if name == header::COOKIE { "; " } else { ", " };
        joined
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(sep);
                v.push_str(&value);
            })
            .or_insert(value);
    }
    EchoRequest {
        method: method.to_string(),
        path: path.to_string(),
        headers: joined,
    }
}

async fn echo(State(log): State<Log>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let record = describe(parts.method.as_str(), &path, &parts.headers);
    if !log.forget.load(Ordering::Relaxed) {
        log.requests.lock().unwrap().push(record.clone());
    }
    let body_json = record.to_json().to_string();
    let is_websocket = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_websocket && let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        return ws.on_upgrade(move |socket| websocket(socket, body_json));
    }
    // Drain any request body.
    let _ = axum::body::to_bytes(body, 1 << 20).await;
    let mut response = (StatusCode::OK, Body::from(body_json)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    headers.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
    if parts.headers.contains_key(header::UPGRADE) {
        // Not a WebSocket: answered like any other request, and the connection closed.
        headers.insert(header::CONNECTION, "close".parse().unwrap());
    }
    response
}

async fn websocket(mut socket: WebSocket, first: String) {
    if socket.send(Message::Text(first.into())).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            // axum answers pings itself; a close is answered and ends the loop.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(c) => {
                let _ = socket.send(Message::Close(c)).await;
                return;
            }
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Sends `request` and reads until the answer contains `until` (or EOF when empty).
    fn exchange(s: &mut std::net::TcpStream, request: &[u8], until: &str) -> Vec<u8> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while until.is_empty() || !String::from_utf8_lossy(&out).contains(until) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    fn raw(addr: SocketAddr, request: &str, until: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        String::from_utf8_lossy(&exchange(&mut s, request.as_bytes(), until)).into_owned()
    }

    #[test]
    fn answers_and_logs_what_it_got() {
        let echo = Echo::start("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let text = raw(
            echo.addr,
            "POST /a/b?x=1 HTTP/1.1\r\nHost: app.localhost:1\r\nCookie: a=1\r\nCookie: b=2\r\nX-Two: 1\r\nX-Two: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "",
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let seen = EchoRequest::from_json(&serde_json::from_str(body).unwrap());
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/a/b?x=1");
        assert_eq!(seen.host(), "app.localhost:1");
        assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
        assert_eq!(seen.header("X-Two"), Some("1, 2"));
        let logged = echo.requests();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].path, "/a/b?x=1");

        echo.keep_requests(false);
        let close = "HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let text = raw(echo.addr, &format!("GET /forgotten {close}"), "");
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "answered all the same: {text}"
        );
        echo.keep_requests(true);
        raw(echo.addr, &format!("GET /kept {close}"), "");
        let paths: Vec<String> = echo.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/a/b?x=1", "/kept"]);
    }

    #[test]
    fn a_websocket_gets_101_and_the_echo_json_first() {
        let echo = Echo::start("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let mut s = std::net::TcpStream::connect(echo.addr).unwrap();
        let text = exchange(
            &mut s,
            b"GET /api/live/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "}}",
        );
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{text}"
        );
        assert!(text.contains("\"path\":\"/api/live/ws\""), "{text}");
        assert_eq!(echo.requests()[0].path, "/api/live/ws");
        // A masked text frame "hi" comes back unmasked.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        let back = exchange(&mut s, &frame, "hi");
        assert!(back.ends_with(&[0x81, 2, b'h', b'i']), "{back:?}");
    }
}
