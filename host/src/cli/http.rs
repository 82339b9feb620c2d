//! The operator's HTTP listener (`[http] listen`): `/metrics` (Prometheus / OpenMetrics
//! text), `/healthz` (the process serves) and `/readyz` (the queue is reachable and the
//! plugins are loaded). hyper, HTTP/1.1, nothing else on it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::service::Health;
use crate::transport::QueueStats;

/// Reads the queue's depth when `/metrics` is scraped.
pub(super) type StatsSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<QueueStats, String>> + Send>> + Send + Sync>;

/// What the endpoints report on.
pub(super) struct Probe {
    /// The consume loop's view of the queue.
    pub(super) health: Arc<Health>,
    /// Set once the plugins are loaded.
    pub(super) plugins_loaded: OnceLock<()>,
    /// Set once the queue is connected.
    pub(super) stats: OnceLock<StatsSource>,
    /// Why the queue is not connected yet, while `serve` retries.
    pub(super) waiting: std::sync::Mutex<Option<String>>,
}

impl Probe {
    /// Nothing loaded or connected yet.
    pub(super) fn new(health: Arc<Health>) -> Arc<Self> {
        Arc::new(Self {
            health,
            plugins_loaded: OnceLock::new(),
            stats: OnceLock::new(),
            waiting: std::sync::Mutex::new(None),
        })
    }

    /// Ready, or why not.
    fn readiness(&self) -> Result<(), String> {
        if self.plugins_loaded.get().is_none() {
            return Err("the plugins are not loaded yet".into());
        }
        if self.stats.get().is_none() {
            let why = self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(match why {
                Some(w) => format!("the queue is not connected yet: {w}"),
                None => "the queue is not connected yet".into(),
            });
        }
        let h = self.health.snapshot();
        if h.ready {
            Ok(())
        } else {
            Err(match h.last_error {
                Some(e) => format!("the queue is unreachable: {e}"),
                None => "no fetch from the queue has succeeded yet".into(),
            })
        }
    }
}

/// Binds `listen` now (a taken port fails the start) and serves on it until the task is
/// aborted.
pub(super) async fn start(
    listen: &str,
    probe: Arc<Probe>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([http] listen)"))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listen = %addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, for instance: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let probe = probe.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let probe = probe.clone();
                    async move { Ok::<_, Infallible>(answer(&probe, &req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(io, service)
                    .await;
            });
        }
    }))
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn answer(probe: &Probe, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match probe.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                super::logging::scrub(&format!("not ready: {why}\n")),
            ),
        },
        "/metrics" => {
            let Some(metrics) = crate::metrics::get() else {
                return text(StatusCode::NOT_FOUND, PLAIN, "metrics are off\n".into());
            };
            metrics.ready(probe.readiness().is_ok());
            if let Some(stats) = probe.stats.get() {
                match tokio::time::timeout(Duration::from_secs(5), stats()).await {
                    Ok(Ok(s)) => {
                        for q in &s.queues {
                            metrics.queue(&q.queue, q.waiting, q.oldest_waiting_secs);
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(cause = %e, "queue depth not read"),
                    Err(_) => tracing::debug!("queue depth not read in 5 s"),
                }
            }
            text(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                metrics.encode(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}
