//! A real HTTP endpoint that receives webhooks in tests.
//!
//! It binds 127.0.0.1:0 in the test's own tokio runtime, answers each request with the next
//! scripted response (204 once the script runs out) and records every request. It can be
//! stopped (listener and every open connection closed, like a crashed server) and started again
//! on the same port, keeping what it recorded. Signatures are
//! checked with the spec authors' own `standardwebhooks` crate, never with Shomei's code, so a
//! bug shared by our signer and our verifier cannot hide.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use warp::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use warp::Filter;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    /// Request path, e.g. `/hooks`.
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    /// All request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: serde_json::Value,
    pub raw: Vec<u8>,
    /// The status the receiver answered with.
    pub answered: u16,
    /// Verified by an independent Standard Webhooks implementation (`standardwebhooks` crate).
    pub verified: bool,
    /// Why verification failed, if it did.
    pub verify_error: Option<String>,
    pub received_at: Instant,
}

impl ReceivedHook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Scripted = (u16, Vec<(String, String)>);

struct State {
    verifier: standardwebhooks::Webhook,
    script: VecDeque<Scripted>,
    delay: Duration,
    received: Vec<ReceivedHook>,
}

pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// `None` while stopped.
    server: Option<tokio::task::JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Starts a receiver that verifies with `secret` (`whsec_…`).
    pub async fn start(secret: &str) -> WebhookReceiver {
        let verifier =
            standardwebhooks::Webhook::new(secret).expect("receiver: invalid whsec_ secret");
        let state = Arc::new(Mutex::new(State {
            verifier,
            script: VecDeque::new(),
            delay: Duration::ZERO,
            received: Vec::new(),
        }));

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("receiver: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver: local_addr");
        let server = Some(tokio::spawn(serve(listener, state.clone())));
        WebhookReceiver {
            addr,
            state,
            server,
        }
    }

    /// Stops listening and drops every open connection (keep-alive ones included): senders
    /// get connection errors until [`WebhookReceiver::start_again`].
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port.
    pub async fn start_again(&mut self) {
        if self.server.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "receiver: bind {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.server = Some(tokio::spawn(serve(listener, self.state.clone())));
    }

    /// The endpoint to register, e.g. `http://127.0.0.1:PORT/hooks`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// `http://127.0.0.1:PORT` without a path, to build other URLs on this receiver.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Statuses (and optional headers) answered to the next requests, in order; after the
    /// script runs out: 204. Replaces any script not yet used up.
    pub fn script(&self, responses: Vec<(u16, Vec<(String, String)>)>) {
        self.lock().script = responses.into();
    }

    /// Verifies with another secret from now on: the one Shomei issued when the receiver's
    /// URL was registered (the URL is known only once the receiver listens).
    pub fn set_secret(&self, secret: &str) {
        self.lock().verifier =
            standardwebhooks::Webhook::new(secret).expect("receiver: invalid whsec_ secret");
    }

    /// Waits this long before answering each following request (to provoke client timeouts).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn received(&self) -> Vec<ReceivedHook> {
        self.lock().received.clone()
    }

    /// Waits until at least `count` requests arrived; panics on timeout listing what arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedHook> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = received
                    .iter()
                    .map(|h| {
                        format!(
                            "{} id={} answered={} verified={}",
                            h.path, h.id, h.answered, h.verified
                        )
                    })
                    .collect();
                panic!(
                    "webhook receiver: expected {count} request(s) within {timeout:?}, got {}: {summary:#?}",
                    received.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// The accept loop. Connections are tasks of a `JoinSet` owned by this future, so aborting it
/// closes them all (warp's own server spawns them loose, and they would outlive a stop).
async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    let route = warp::post()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |path: warp::path::FullPath, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(&state, path.as_str(), &headers, &body).await }
            },
        );
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let service = warp::service(route.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                tower_service::Service::call(&mut service.clone(), request)
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

async fn handle(
    state: &Mutex<State>,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> warp::reply::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let ((status, extra), delay) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = state.verifier.verify(body, headers);
        let answer = state.script.pop_front().unwrap_or((204, Vec::new()));
        state.received.push(ReceivedHook {
            path: path.to_owned(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            raw: body.to_vec(),
            answered: answer.0,
            verified: verdict.is_ok(),
            verify_error: verdict.err().map(|e| e.to_string()),
            received_at: Instant::now(),
        });
        (answer, state.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut response = warp::reply::Response::new(Default::default());
    *response.status_mut() = StatusCode::from_u16(status).expect("receiver: scripted status");
    for (name, value) in extra {
        response.headers_mut().append(
            HeaderName::try_from(name).expect("receiver: scripted header name"),
            HeaderValue::try_from(value).expect("receiver: scripted header value"),
        );
    }
    response
}
