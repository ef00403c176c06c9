//! The HTTP endpoints: `/metrics` for Prometheus, `/health` for people and
//! load balancers. They run on a thread of their own, so that a scrape is
//! answered at once even while the sampling loop attaches probes.
//!
//! The endpoint must never starve the monitor it reports on: connections are
//! bounded far below the descriptor limit (a flood used to exhaust it, which
//! failed scrapes, dropped targets and broke probe loading), a request head
//! must arrive within a few seconds and fit in a small buffer, and a
//! connection is closed after a fixed time whatever it does. When every slot
//! is taken, the oldest connection that is not being answered makes room, so
//! idle connections cannot lock a scraper out.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt as _;

use super::status::Status;

pub type SharedStatus = Arc<Mutex<Status>>;

/// Connections served at once: a few scrapers and people, and a small share
/// of the descriptors (each probed target needs dozens).
const MAX_CONNECTIONS: usize = 64;
/// To send a request head, on a new connection or between requests on a
/// kept-alive one (Prometheus sends its scrape at once).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, however busy.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Request heads larger than this are refused (hyper's minimum buffer).
const MAX_HEAD_BYTES: usize = 8192;
/// After a response, a connection is left alone this long, so that the
/// response is delivered before it can be closed to make room.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

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
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, router(status), stopped).await,
                    Err(e) => eprintln!("leakscope: warning: the HTTP server stopped: {e:#}"),
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

async fn serve(listener: tokio::net::TcpListener, router: Router, mut stopped: oneshot::Receiver<()>) {
    let slots = Arc::new(Mutex::new(Slots::new()));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    log::warn!("HTTP: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Every connection busy answering: this one is closed at once.
        let Some(slot) = slots.lock().expect("slots lock").admit() else {
            continue;
        };
        let (slots, router) = (slots.clone(), router.clone());
        tokio::spawn(async move {
            serve_connection(stream, router, &slot).await;
            slots.lock().expect("slots lock").release(slot.id);
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, router: Router, slot: &Slot) {
    let (busy_until, epoch) = (slot.busy_until.clone(), slot.epoch);
    let service = hyper::service::service_fn(move |request| {
        let (router, busy_until) = (router.clone(), busy_until.clone());
        async move {
            busy_until.store(u64::MAX, Ordering::Relaxed);
            let response = router.oneshot(request).await;
            busy_until.store(millis_since(epoch) + ANSWER_GRACE.as_millis() as u64, Ordering::Relaxed);
            response
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = slot.close.notified() => {}
        _ = tokio::time::sleep(MAX_CONNECTION_TIME) => {}
    }
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// An open connection.
struct Slot {
    id: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` until which it must not be closed to make
    /// room: u64::MAX while a request is answered, 0 before the first.
    busy_until: Arc<AtomicU64>,
    /// Tells it to close.
    close: Arc<Notify>,
}

/// The open connections, oldest first.
struct Slots {
    open: Vec<Slot>,
    next_id: u64,
    epoch: Instant,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            open: Vec::new(),
            next_id: 0,
            epoch: Instant::now(),
        }
    }

    /// A slot for a new connection; when all are taken, the oldest one not
    /// being answered is told to close. None when every one is busy.
    fn admit(&mut self) -> Option<Slot> {
        if self.open.len() >= MAX_CONNECTIONS {
            let now = millis_since(self.epoch);
            let idle = self
                .open
                .iter()
                .position(|s| s.busy_until.load(Ordering::Relaxed) <= now)?;
            self.open.remove(idle).close.notify_one();
        }
        let slot = Slot {
            id: self.next_id,
            epoch: self.epoch,
            busy_until: Arc::new(AtomicU64::new(0)),
            close: Arc::new(Notify::new()),
        };
        self.next_id += 1;
        self.open.push(Slot {
            busy_until: slot.busy_until.clone(),
            close: slot.close.clone(),
            ..slot
        });
        Some(slot)
    }

    fn release(&mut self, id: u64) {
        self.open.retain(|s| s.id != id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_the_oldest_idle_connection() {
        let mut slots = Slots::new();
        let admitted: Vec<Slot> = (0..MAX_CONNECTIONS).map(|_| slots.admit().unwrap()).collect();
        // The two oldest are answering a request; the third is idle.
        admitted[0].busy_until.store(u64::MAX, Ordering::Relaxed);
        admitted[1].busy_until.store(u64::MAX, Ordering::Relaxed);
        let newest = slots.admit().expect("room is made");
        assert_eq!(slots.open.len(), MAX_CONNECTIONS);
        assert!(
            !slots.open.iter().any(|s| s.id == admitted[2].id),
            "the oldest idle one was closed"
        );
        assert!(slots.open.iter().any(|s| s.id == admitted[0].id));
        // Told to close: the permit is stored until its task looks.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), admitted[2].close.notified())
                .await
                .expect("the evicted connection is notified");
        });
        // Everyone busy: the new connection is refused.
        for slot in &slots.open {
            slot.busy_until.store(u64::MAX, Ordering::Relaxed);
        }
        assert!(slots.admit().is_none());
        slots.release(newest.id);
        assert_eq!(slots.open.len(), MAX_CONNECTIONS - 1);
        assert!(slots.admit().is_some());
    }
}
