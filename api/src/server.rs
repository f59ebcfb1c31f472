//! The API's listener: HTTPS through rustls (TLS 1.2 and 1.3 only), or plain HTTP when the
//! configuration asks for it, serving the warp filter through hyper either way.
//!
//! warp 0.4 has no TLS, and its server accepts only its own listener types, so the accept loop
//! is ours. So is the peer address: warp fills in `warp::addr::remote()` only in its own server,
//! hence this loop puts a [`ClientAddr`] on every request and the routes read that. A failed
//! handshake ends that connection only, and is logged with the peer's address and rustls's
//! reason, never with anything from the key.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

/// A client that has not finished its handshake by then is dropped (it would hold a task and,
/// at shutdown, delay the exit).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for open requests to finish before the process exits anyway (a
/// client trickling a body or a download could otherwise hold it for ever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The peer address of the connection a request came on; [`serve`] puts it on every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The peer address as a filter, what `warp::addr::remote()` gives under warp's own server.
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| addr.map(|a| a.0))
}

/// TLS for the certificate chain (leaf first) and private key in these PEM files: TLS 1.2 and
/// 1.3 only, ALPN `h2` and `http/1.1`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("reading SHOMEI_TLS_CERT {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "SHOMEI_TLS_CERT {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading SHOMEI_TLS_KEY {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("SHOMEI_TLS_KEY does not fit SHOMEI_TLS_CERT's certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` on `listener`, over TLS when `tls` is given, until `shutdown` resolves; then
/// stops accepting and waits for open connections to finish their requests.
pub async fn serve(
    routes: BoxedFilter<(Response,)>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let routes = routes.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, peer, routes, watcher).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, routes, watcher).await,
                // Scanners and clients offering TLS 1.1 or less end up here: routine, not an
                // error of ours.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing open requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "requests still open after the shutdown grace; exiting anyway"
        );
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    routes: BoxedFilter<(Response,)>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = warp::service(routes);
    let service = hyper::service::service_fn(move |mut request| {
        request.extensions_mut().insert(ClientAddr(peer));
        tower_service::Service::call(&mut service.clone(), request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        // Mostly clients going away mid-request.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Like warp's server: errors that belong to one connection are ignored; others (out of file
/// descriptors) are logged and the loop waits a second before accepting again.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
