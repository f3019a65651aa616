//! The control API: HTTP/1.1 on a Unix socket (mode 0600) that only the Python router talks to.
//!
//! The router stays the owner of configuration and metrics: it `PUT`s the table it rendered from its
//! validated config (`/table`), pulls the cumulative counters for its Prometheus `/metrics` (`/stats`),
//! waits for `/health` at start (which also tells it the data port, the OS's choice when it asked for
//! port 0), and on SIGTERM starts the drain (`POST /drain`: every answer closes its connection from then
//! on). Nothing here is reachable from the network.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::OutBody;
use crate::errors::{json_string, ErrorAnswer, Reason};
use crate::log;
use crate::state::App;
use crate::stats::Gauges;
use crate::table::TableSpec;

/// Largest table accepted (thousands of models fit).
const MAX_TABLE_BYTES: usize = 4 * 1024 * 1024;

fn json(status: StatusCode, body: String) -> Response<OutBody> {
    let mut response = Response::new(OutBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn bad_config(field: &str, message: &str) -> Response<OutBody> {
    let body = format!(
        "{{\"error\":{},\"reason\":\"bad_config\",\"status\":400,\"field\":{}}}",
        json_string(&format!("{field}: {message}")),
        json_string(field)
    );
    json(StatusCode::BAD_REQUEST, body)
}

/// Install a table from a request body: 204, or 400 naming the field.
async fn put_table(app: &App, body: Incoming) -> Response<OutBody> {
    let raw = match Limited::new(body, MAX_TABLE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return bad_config("table", &format!("unreadable, or over {MAX_TABLE_BYTES} bytes")),
    };
    let value: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(value) => value,
        Err(e) => return bad_config("table", &format!("not valid JSON ({e})")),
    };
    match TableSpec::parse(&value) {
        Ok(spec) => {
            let models = spec.models.len();
            app.install(spec);
            log::info(format_args!("table installed: {models} proxied models"));
            let mut response = Response::new(OutBody::full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(error) => bad_config(&error.field, &error.message),
    }
}

async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<OutBody>, Infallible> {
    let path = request.uri().path().to_owned();
    let response = match (request.method().clone(), path.as_str()) {
        (Method::PUT, "/table") => put_table(&app, request.into_body()).await,
        (Method::GET, "/stats") => {
            let (queue_length, in_flight) = app.admission.figures();
            json(StatusCode::OK, app.stats.render(Gauges { queue_length, in_flight }, Instant::now()))
        }
        (Method::GET, "/health") => json(
            StatusCode::OK,
            format!(
                "{{\"status\":\"ok\",\"table\":{},\"draining\":{},\"listen\":{}}}",
                app.table().is_some(),
                app.draining(),
                json_string(&app.listen)
            ),
        ),
        (Method::POST, "/drain") => {
            let close_idle = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "idle=close"));
            if !app.draining() {
                log::info(format_args!("draining: every answer closes its connection from now on"));
            }
            app.drain(close_idle);
            let mut response = Response::new(OutBody::full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (method, "/table" | "/stats" | "/health" | "/drain") => {
            ErrorAnswer::new(Reason::MethodNotAllowed, format!("{method} is not served on this path")).uncounted()
        }
        _ => ErrorAnswer::new(Reason::NotFound, "no such endpoint on this listener").uncounted(),
    };
    Ok(response)
}

/// Serve the control socket until `shutdown` turns true.
pub async fn serve(app: Arc<App>, listener: UnixListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(app.clone(), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
