//! Runs the servers (gRPC ext_authz, HTTP, and the optional JWKS, metrics and forward-auth
//! listeners)
//! over one shared [`App`], with one graceful shutdown for all. [`bind`] and [`serve`] are
//! separate, mini-redis style: `main` binds the configured addresses and passes the
//! SIGTERM future; tests bind port 0 and pass any future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Live;
use crate::config::ServerConfig;
use crate::ext_authz::{AuthorizationServer, AuthzService};

pub mod activation;
pub mod grpc_io;

/// The bound listeners, in config order.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub jwks: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
    /// The session administration API.
    pub admin: Option<TcpListener>,
    /// The forward-auth endpoint for nginx, Caddy and Traefik.
    pub forward_auth: Option<TcpListener>,
}

impl Listeners {
    /// Writes the bound addresses as JSON to `path`, atomically (a temporary file renamed
    /// into place), so a reader never sees a partial file. Connections made after this
    /// point queue in the kernel until the servers accept them.
    pub fn write_ready_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string());
        let mut ready = serde_json::Map::new();
        ready.insert("grpc".into(), addr(&self.grpc)?.into());
        ready.insert("http".into(), addr(&self.http)?.into());
        if let Some(l) = &self.jwks {
            ready.insert("jwks".into(), addr(l)?.into());
        }
        if let Some(l) = &self.metrics {
            ready.insert("metrics".into(), addr(l)?.into());
        }
        if let Some(l) = &self.admin {
            ready.insert("admin".into(), addr(l)?.into());
        }
        if let Some(l) = &self.forward_auth {
            ready.insert("forward_auth".into(), addr(l)?.into());
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::Value::Object(ready).to_string())?;
        std::fs::rename(&tmp, path)
    }
}

/// Binds every listener. Separate from [`serve`] so a bind failure is reported before
/// anything runs.
pub async fn bind(config: &ServerConfig) -> std::io::Result<Listeners> {
    bind_with(config, activation::Inherited::default()).await
}

/// Binds every listener, except those the parent passed already bound (`inherited`).
pub async fn bind_with(
    config: &ServerConfig,
    mut inherited: activation::Inherited,
) -> std::io::Result<Listeners> {
    async fn one(
        inherited: &mut activation::Inherited,
        name: &str,
        addr: SocketAddr,
        key: &str,
    ) -> std::io::Result<TcpListener> {
        if let Some(l) = inherited.remove(name) {
            return TcpListener::from_std(l);
        }
        TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{key} {addr}: {e}")))
    }
    // A socket for a listener the config does not have is a mistake in the unit file: say
    // so before binding anything.
    let mut configured = vec!["grpc", "http"];
    configured.extend(config.jwks_address.map(|_| "jwks"));
    configured.extend(config.metrics_address.map(|_| "metrics"));
    configured.extend(config.admin_address.map(|_| "admin"));
    configured.extend(config.forward_auth_address.map(|_| "forward_auth"));
    let unused: Vec<String> = inherited
        .unused()
        .into_iter()
        .filter(|n| !configured.contains(&n.as_str()))
        .collect();
    if !unused.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "sockets passed for listeners the config does not have: {}",
                unused.join(", ")
            ),
        ));
    }
    let grpc = one(
        &mut inherited,
        "grpc",
        config.grpc_address,
        "server.grpc_address",
    )
    .await?;
    let http = one(
        &mut inherited,
        "http",
        config.http_address,
        "server.http_address",
    )
    .await?;
    let jwks = match config.jwks_address {
        Some(a) => Some(one(&mut inherited, "jwks", a, "server.jwks_address").await?),
        None => None,
    };
    let metrics = match config.metrics_address {
        Some(a) => Some(one(&mut inherited, "metrics", a, "server.metrics_address").await?),
        None => None,
    };
    let admin = match config.admin_address {
        Some(a) => Some(one(&mut inherited, "admin", a, "admin.address").await?),
        None => None,
    };
    let forward_auth = match config.forward_auth_address {
        Some(a) => Some(
            one(
                &mut inherited,
                "forward_auth",
                a,
                "server.forward_auth_address",
            )
            .await?,
        ),
        None => None,
    };
    Ok(Listeners {
        grpc,
        http,
        jwks,
        metrics,
        admin,
        forward_auth,
    })
}

/// The ext_authz service's name in `grpc.health.v1`.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// How a server stops.
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    /// After the shutdown signal, how long to keep serving while gRPC health says
    /// NOT_SERVING (Envoy's health checks move traffic to other replicas meanwhile).
    pub drain_delay: Duration,
    /// Then, how long in-flight requests may finish.
    pub grace: Duration,
}

/// Serves `app` until `shutdown` resolves, then drains as `stopping` says.
pub async fn serve(
    live: Arc<Live>,
    listeners: Listeners,
    stopping: Stopping,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Stopping { drain_delay, grace } = stopping;
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        jwks: jwks_listener,
        metrics: metrics_listener,
        admin: admin_listener,
        forward_auth: forward_auth_listener,
    } = listeners;
    let grpc_addr = grpc_listener.local_addr()?;

    let discovery = {
        let app = live.app();
        tokio::spawn(async move { app.idp.discover_until_ready().await })
    };
    let sweeper = {
        let live = live.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let app = live.app();
                let now = app.now();
                app.store.sweep(now).await;
                app.tokens().prune(now);
                app.limits.sweep();
            }
        })
    };

    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The HTTP service, and the optional JWKS, metrics and forward-auth listeners, all axum.
    let mut servers = Vec::new();
    for (name, listener, router) in [
        (
            "http",
            Some(http_listener),
            crate::web::router_live(live.clone()),
        ),
        ("jwks", jwks_listener, crate::web::jwks_router(live.clone())),
        (
            "metrics",
            metrics_listener,
            crate::web::metrics_router(live.clone()),
        ),
        (
            "forward_auth",
            forward_auth_listener,
            crate::forward_auth::router_live(live.clone()),
        ),
    ] {
        let Some(listener) = listener else { continue };
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "{name} listening");
        if name == "forward_auth" && !addr.ip().is_loopback() {
            // It decides on the X-Forwarded-* headers it is sent: anyone who can reach it
            // can describe any request. Fine on a private network only the proxy is on.
            tracing::warn!(%addr, "the forward-auth listener is not on loopback: make sure only the proxy can reach it");
        }
        let signal = stopped(rx.clone());
        servers.push(tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(error = %e, "{name} server error");
            }
        }));
    }
    // gRPC health on the ext_authz listener, for Envoy's active health checks: SERVING
    // while the session store can answer (a Redis store once connected) and until shutdown
    // begins, so that Envoy sends no Check to a replica that would only answer 503.
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = {
        let live = live.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut serving = None;
            loop {
                let now = live.app().is_serving();
                if serving != Some(now) {
                    let status = if now {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status(AUTHZ_SERVICE, status).await;
                    health.set_service_status("", status).await;
                    serving = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    {
        let svc = AuthorizationServer::new(AuthzService::live(live.clone()));
        let signal = stopped(rx.clone());
        let incoming = grpc_io::incoming(grpc_listener);
        tracing::info!(addr = %grpc_addr, "ext_authz gRPC listening");
        servers.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
            {
                tracing::error!(error = %e, "grpc server error");
            }
        }));
    }
    if let Some(listener) = admin_listener {
        let svc = crate::admin::service(live.clone());
        let signal = stopped(rx.clone());
        tracing::info!(addr = %listener.local_addr()?, "admin gRPC listening");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        servers.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
            {
                tracing::error!(error = %e, "admin server error");
            }
        }));
    }

    shutdown.await;
    live.app()
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    health_task.abort();
    health
        .set_service_status(AUTHZ_SERVICE, tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    if !drain_delay.is_zero() {
        tracing::info!(drain_delay = ?drain_delay, "draining: health NOT_SERVING, still answering");
        tokio::time::sleep(drain_delay).await;
    }
    tracing::info!(grace = ?grace, "shutting down");
    let _ = tx.send(true);
    discovery.abort();
    sweeper.abort();
    let drained = tokio::time::timeout(grace, async {
        for server in servers {
            let _ = server.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "connections still open after the grace period; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds on Unix");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;
