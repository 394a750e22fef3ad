//! `bitvelocity serve`'s doors started together over one engine: every listener is bound
//! before any door answers (a door that cannot start stops the server), and one shutdown
//! signal stops them all.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::engine::QueryEngine;
use crate::{Result, ServingError};

/// Where each door listens; `None` turns it off.
#[derive(Debug, Clone, Copy)]
pub struct DoorAddrs {
    /// SQL over HTTP, `/health`, `/metrics` (and the Iceberg REST catalog).
    pub http: Option<SocketAddr>,
    /// Arrow Flight SQL.
    pub flight: Option<SocketAddr>,
    /// The PostgreSQL wire protocol.
    pub pgwire: Option<SocketAddr>,
}

/// The doors' sockets, bound and not yet answering.
pub struct Listeners {
    http: Option<TcpListener>,
    flight: Option<TcpListener>,
    pgwire: Option<TcpListener>,
}

/// Binds every door in `addrs`.
pub async fn bind(addrs: &DoorAddrs) -> Result<Listeners> {
    async fn one(addr: Option<SocketAddr>) -> Result<Option<TcpListener>> {
        match addr {
            None => Ok(None),
            Some(addr) => TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|source| ServingError::Bind { addr, source }),
        }
    }
    Ok(Listeners {
        http: one(addrs.http).await?,
        flight: one(addrs.flight).await?,
        pgwire: one(addrs.pgwire).await?,
    })
}

impl Listeners {
    /// The addresses bound (port 0 resolved).
    pub fn addrs(&self) -> DoorAddrs {
        let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        DoorAddrs {
            http: local(&self.http),
            flight: local(&self.flight),
            pgwire: local(&self.pgwire),
        }
    }

    /// Serves every bound door over `engine` until `shutdown` turns true; the first door to
    /// fail stops the others and is the error returned.
    pub async fn serve(
        self,
        engine: Arc<QueryEngine>,
        auth: Arc<Authenticator>,
        rest: Option<Arc<crate::rest::RestCatalog>>,
        config: &crate::config::ServeConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        // Loaded before any door answers: unusable TLS stops the server, never plaintext.
        let tls = config.tls.as_ref().map(crate::tls::load).transpose()?;
        let mut doors = tokio::task::JoinSet::new();
        if let Some(listener) = self.http {
            let router = crate::http::router(crate::http::HttpState {
                engine: engine.clone(),
                auth: auth.clone(),
                rest,
            });
            match &tls {
                None => {
                    let signal = stopped(shutdown.clone());
                    // Small answers go out as written: without TCP_NODELAY, an answer's
                    // second write waits for the client's delayed ACK (40 ms on Linux).
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    doors.spawn(async move {
                        axum::serve(listener, router)
                            .with_graceful_shutdown(signal)
                            .await
                            .map_err(|e| ServingError::Door {
                                door: "http",
                                message: e.to_string(),
                            })
                    });
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.with_alpn(&[b"http/1.1"]));
                    doors.spawn(serve_https(listener, router, acceptor, shutdown.clone()));
                }
            }
        }
        if let Some(listener) = self.flight {
            let door = crate::flight::FlightDoor::new(engine.clone(), auth.clone())?;
            let signal = stopped(shutdown.clone());
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = &tls {
                let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .map_err(|e| ServingError::Door {
                        door: "flight",
                        message: format!("TLS: {e}"),
                    })?;
            }
            doors.spawn(async move {
                builder
                    .add_service(door.service())
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        signal,
                    )
                    .await
                    .map_err(|e| ServingError::Door {
                        door: "flight",
                        message: e.to_string(),
                    })
            });
        }
        if let Some(listener) = self.pgwire {
            let door = Arc::new(crate::pg::PgDoor::new(
                engine.clone(),
                auth.clone(),
                config,
            )?);
            let stop = shutdown.clone();
            let acceptor = tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
            doors.spawn(async move { door.serve(listener, acceptor, stop).await });
        }
        let mut result = Ok(());
        while let Some(done) = doors.join_next().await {
            let outcome = done.unwrap_or_else(|e| {
                Err(ServingError::Door {
                    door: "a door",
                    message: format!("its task ended abnormally: {e}"),
                })
            });
            if let Err(e) = outcome {
                if result.is_ok() {
                    result = Err(e);
                }
                doors.abort_all();
            }
        }
        result
    }
}

/// The HTTP door over TLS: each connection's handshake (bounded in time) on its own task,
/// then HTTP/1.1 over the router; stops accepting at shutdown.
async fn serve_https(
    listener: TcpListener,
    router: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(socket),
                    );
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}
