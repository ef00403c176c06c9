//! The HTTP endpoints: `/metrics` for Prometheus, `/health` for people and
//! load balancers.

use std::sync::{Arc, Mutex};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use super::status::Status;

pub type SharedStatus = Arc<Mutex<Status>>;

pub fn router(status: SharedStatus) -> Router {
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
