//! The HTTP endpoints: `/metrics` for Prometheus, `/health` for people and
//! load balancers. They run on a thread of their own, so that a scrape is
//! answered at once even while the sampling loop attaches probes.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::sync::oneshot;

use super::status::Status;

pub type SharedStatus = Arc<Mutex<Status>>;

pub struct Server {
    /// Where it listens (the port chosen, for `--listen 127.0.0.1:0`).
    pub address: SocketAddr,
    thread: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Server {
    /// Binds `address` (an error if it is taken) and serves `status` from a new thread.
    pub fn start(address: SocketAddr, status: SharedStatus) -> Result<Server> {
        let listener = TcpListener::bind(address).with_context(|| format!("cannot listen on {address}"))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => axum::serve(listener, router(status))
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = served {
                    eprintln!("leakscope: warning: the HTTP server stopped: {e:#}");
                }
            })
        });
        Ok(Server { address, thread, stop })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn router(status: SharedStatus) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(status)
}

async fn metrics(State(status): State<SharedStatus>) -> impl IntoResponse {
    let text = status.lock().expect("status lock").metrics_text();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text)
}

async fn health(State(status): State<SharedStatus>) -> impl IntoResponse {
    let json = status.lock().expect("status lock").health_json();
    ([(header::CONTENT_TYPE, "application/json")], json)
}
