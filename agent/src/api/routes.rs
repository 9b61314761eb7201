//! The `/v1/cni/*` routes: decode the body, run the operation, answer with a result, an empty
//! `204`, or a CNI error whose HTTP status matches its kind.
//!
//! Each operation runs in its own task, so a plugin that gives up (killed by the runtime's
//! timeout) never cancels an ADD halfway: the ADD finishes or undoes itself either way, and
//! the runtime's DEL that follows finds a consistent state.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use wren_cni::wire::{AttachmentRequest, NetworkRequest, paths};
use wren_cni::{CniError, Command, ErrorCode};

use super::service::CniService;

/// Called after every request with the command, whether it succeeded, and how long it took
/// (the daemon feeds its latency histogram from this).
pub type RequestObserver = Arc<dyn Fn(Command, bool, Duration) + Send + Sync>;

#[derive(Clone)]
struct CniState {
    service: Arc<dyn CniService>,
    observer: Option<RequestObserver>,
}

/// The CNI routes, with their state applied, ready to be merged into the agent's router or
/// served alone.
pub fn cni_routes(service: Arc<dyn CniService>, observer: Option<RequestObserver>) -> Router {
    Router::new()
        .route(paths::ADD, post(add))
        .route(paths::DEL, post(del))
        .route(paths::CHECK, post(check))
        .route(paths::GC, post(gc))
        .route(paths::STATUS, post(status))
        .with_state(CniState { service, observer })
}

async fn add(
    State(state): State<CniState>,
    body: Result<Json<AttachmentRequest>, JsonRejection>,
) -> Response {
    run(
        state,
        Command::Add,
        body,
        |s, r| async move { s.add(r).await },
        |result| (StatusCode::OK, Json(result)).into_response(),
    )
    .await
}

async fn del(
    State(state): State<CniState>,
    body: Result<Json<AttachmentRequest>, JsonRejection>,
) -> Response {
    run(
        state,
        Command::Del,
        body,
        |s, r| async move { s.del(r).await },
        no_content,
    )
    .await
}

async fn check(
    State(state): State<CniState>,
    body: Result<Json<AttachmentRequest>, JsonRejection>,
) -> Response {
    run(
        state,
        Command::Check,
        body,
        |s, r| async move { s.check(r).await },
        no_content,
    )
    .await
}

async fn gc(
    State(state): State<CniState>,
    body: Result<Json<NetworkRequest>, JsonRejection>,
) -> Response {
    run(
        state,
        Command::Gc,
        body,
        |s, r| async move { s.gc(r).await },
        no_content,
    )
    .await
}

async fn status(
    State(state): State<CniState>,
    body: Result<Json<NetworkRequest>, JsonRejection>,
) -> Response {
    run(
        state,
        Command::Status,
        body,
        |s, r| async move { s.status(r).await },
        no_content,
    )
    .await
}

fn no_content(_: ()) -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// What a request is about, carried by every log line it causes (the handler's and the
/// failure's): the Kubernetes pod and the container for an attachment, the network otherwise.
trait Subject {
    fn span(&self, command: Command) -> tracing::Span;
}

impl Subject for AttachmentRequest {
    fn span(&self, command: Command) -> tracing::Span {
        let a = &self.attachment;
        tracing::info_span!("cni", %command, pod = %a.args.pod(), container = %a.container_id)
    }
}

impl Subject for NetworkRequest {
    fn span(&self, command: Command) -> tracing::Span {
        tracing::info_span!("cni", %command, network = %self.config.name)
    }
}

/// Decodes, runs `call` in its own task, observes, and renders the answer.
async fn run<Req, Out, Fut>(
    state: CniState,
    command: Command,
    body: Result<Json<Req>, JsonRejection>,
    call: impl FnOnce(Arc<dyn CniService>, Req) -> Fut,
    render: impl FnOnce(Out) -> Response,
) -> Response
where
    Req: DeserializeOwned + Subject,
    Out: Send + 'static,
    Fut: Future<Output = Result<Out, CniError>> + Send + 'static,
{
    let started = Instant::now();
    let mut span = tracing::Span::none();
    let outcome = match body {
        Ok(Json(request)) => {
            span = request.span(command);
            let call = call(state.service.clone(), request).instrument(span.clone());
            match tokio::spawn(call).await {
                Ok(outcome) => outcome,
                Err(e) => Err(CniError::new(
                    ErrorCode::IO_FAILURE,
                    format!("the agent failed while serving {command}: {e}"),
                )),
            }
        }
        Err(rejection) => Err(CniError::new(
            ErrorCode::DECODE_FAILURE,
            format!("the agent could not read the {command} request"),
        )
        .with_details(rejection.body_text())),
    };
    if let Some(observe) = &state.observer {
        observe(command, outcome.is_ok(), started.elapsed());
    }
    match outcome {
        Ok(out) => render(out),
        Err(e) => {
            span.in_scope(|| tracing::warn!(%command, code = e.code.0, msg = %e.msg, details = %e.details, "CNI request failed"));
            (http_status(e.code), Json(e)).into_response()
        }
    }
}

/// The HTTP status for a CNI error: the plugin reads the body, people with `curl` the status.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::TRY_AGAIN_LATER
        | ErrorCode::NOT_AVAILABLE
        | ErrorCode::NOT_AVAILABLE_LIMITED => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::UNKNOWN_CONTAINER => StatusCode::NOT_FOUND,
        ErrorCode::INCOMPATIBLE_VERSION
        | ErrorCode::UNSUPPORTED_FIELD
        | ErrorCode::INVALID_ENVIRONMENT
        | ErrorCode::DECODE_FAILURE
        | ErrorCode::INVALID_NETWORK_CONFIG => StatusCode::BAD_REQUEST,
        ErrorCode::ADDRESSES_EXHAUSTED
        | ErrorCode::NO_USABLE_POOL
        | ErrorCode::INTERFACE_EXISTS
        | ErrorCode::REQUESTED_ADDRESS_UNAVAILABLE => StatusCode::CONFLICT,
        ErrorCode::CHECK_FAILED => StatusCode::PRECONDITION_FAILED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
