//! The admin API's routes, its bearer check and its one error shape
//! (`{"code", "message"}`, as the gateway's).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use im_schema::v1;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Admin;
use crate::cmd::projections::{rebuild, status};

/// The longest apply-rate sample a status call may ask for: the page polls,
/// and a slow answer holds a connection.
const INTERVAL_MAX_MS: u64 = 5_000;

pub fn router(admin: Arc<Admin>) -> Router {
    let api = Router::new()
        .route("/admin/v1/status", get(status_of_all))
        .route("/admin/v1/rebuild", post(start_rebuild))
        .route("/admin/v1/erase", post(erase_user))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            operator_only,
        ))
        .route("/", get(|| async { Redirect::to("/ops.html") }))
        .route("/healthz", get(|| async { "ok" }));
    let api = match &admin.web_dir {
        Some(dir) => api.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => api.fallback(|| async {
            AdminError(
                StatusCode::NOT_FOUND,
                "ERROR_CODE_NOT_FOUND",
                "no ops page here: the web app is not built (scripts/up.sh builds clients/web; \
                 or pass --web-dir)"
                    .into(),
            )
        }),
    };
    api.with_state(admin)
}

/// An admin API failure, in the gateway API's error shape (`code` an
/// `ErrorCode` name): 401 for a missing or wrong token, 400 for a bad
/// request, 503 when NATS or a projector does not answer.
struct AdminError(StatusCode, &'static str, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().unwrap());
        }
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"imctl admin\"".parse().unwrap(),
            );
        }
        resp
    }
}

fn unavailable(e: anyhow::Error) -> AdminError {
    AdminError(
        StatusCode::SERVICE_UNAVAILABLE,
        "ERROR_CODE_UNAVAILABLE",
        format!("{e:#}"),
    )
}

async fn operator_only(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(im_gateway::http::bearer_token)
        .unwrap_or("");
    if !same(given.as_bytes(), admin.token.as_bytes()) {
        let why = if given.is_empty() {
            "an operator token is required"
        } else {
            "not the operator token"
        };
        return AdminError(
            StatusCode::UNAUTHORIZED,
            "ERROR_CODE_UNAUTHORIZED",
            why.into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Equal, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EraseBody {
    user_id: String,
    requested_by: String,
}

/// `POST /admin/v1/erase` `{"userId", "requestedBy"}`: `imctl erase`
/// (docs/privacy.md): the user's content keys destroyed, the erasure
/// recorded; answers what was done.
async fn erase_user(
    State(admin): State<Arc<Admin>>,
    Json(body): Json<EraseBody>,
) -> Result<Json<Value>, AdminError> {
    let bad = |m: String| AdminError(StatusCode::BAD_REQUEST, "ERROR_CODE_BAD_REQUEST", m);
    im_streams::ids::validate_id(im_streams::ids::IdKind::User, &body.user_id)
        .map_err(|e| bad(format!("userId: {e}")))?;
    let by = &body.requested_by;
    if by.is_empty() || by.len() > im_streams::people::REQUESTED_BY_BYTES_MAX {
        return Err(bad(format!(
            "requestedBy: 1..={} bytes",
            im_streams::people::REQUESTED_BY_BYTES_MAX
        )));
    }
    let given = (admin.signing_key_file.as_deref(), admin.media.as_ref());
    let done = crate::cmd::keys::erase_with(admin.client.clone(), given, &body.user_id, by)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "userId": body.user_id,
        "keysDestroyed": done.erasure.keys,
        "recordedAtStreamSeq": done.erasure.stream_seq,
        "mediaDeleted": done.media_deleted,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatusParams {
    #[serde(default = "default_interval")]
    interval_ms: u64,
}

fn default_interval() -> u64 {
    500
}

/// `GET /admin/v1/status`: streams, every instance's projections (checkpoint,
/// lag, apply rate, dead letters), the pool's partitions (owner, epoch,
/// lease age, lag, followers) and every rebuild the instances report.
async fn status_of_all(
    State(admin): State<Arc<Admin>>,
    Query(p): Query<StatusParams>,
) -> Result<Json<Value>, AdminError> {
    let js = async_nats::jetstream::new(admin.client.clone());
    let streams = crate::cmd::streams::collect_status(&js)
        .await
        .map_err(unavailable)?;
    let interval = p.interval_ms.min(INTERVAL_MAX_MS);
    let projections = status::collect(&admin.client, interval, false)
        .await
        .map_err(unavailable)?;
    let mut instances: Vec<&str> = projections
        .rows
        .iter()
        .map(|r| r.instance.as_str())
        .collect();
    instances.dedup();
    let mut rebuilds = Vec::new();
    for instance in instances {
        for r in rebuild::progress(&admin.client, instance)
            .await
            .map_err(unavailable)?
        {
            rebuilds.push(progress_json(instance, &r));
        }
    }
    let partitions = crate::cmd::projections::partitions::collect(&js)
        .await
        .map_err(unavailable)?;
    let notifiers = notifiers(&admin.client, &projections.rows).await;
    Ok(Json(json!({
        "streams": streams,
        "projections": projections.rows,
        "unanswered": projections.unanswered,
        "partitions": partitions,
        "rebuilds": rebuilds,
        "notifiers": notifiers,
    })))
}

/// How long the status waits for a notifier's counts: an instance that
/// is not a notifier has nobody on the subject and answers at once.
const NOTIFIER_ASK: std::time::Duration = std::time::Duration::from_millis(500);

/// The notifiers (their outbox, lag, sent, dead letters): the default
/// instance and any instance named like a projector's, asked at once.
async fn notifiers(client: &async_nats::Client, rows: &[status::Row]) -> Vec<Value> {
    let mut instances: Vec<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
    instances.push(im_notifier::config::DEFAULT_INSTANCE);
    instances.sort();
    instances.dedup();
    let asks = instances.into_iter().map(|instance| async move {
        let cmd = v1::NotifyControl::default();
        let r = crate::cmd::notify::ask(client, instance, cmd, NOTIFIER_ASK)
            .await
            .ok()?;
        let s = r.stats.unwrap_or_default();
        Some(json!({
            "instance": instance,
            "outbox": s.outbox,
            "pendingMessages": s.pending_messages,
            "lagMs": s.lag_ms,
            "sent": s.sent,
            "retries": s.retries,
            "deadLetters": r.total,
            "unregistered": s.unregistered,
        }))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RebuildBody {
    #[serde(default = "default_instance")]
    instance: String,
    projections: Vec<String>,
    #[serde(default)]
    from_seq: u64,
}

fn default_instance() -> String {
    im_projectors::DEFAULT_INSTANCE.into()
}

/// `POST /admin/v1/rebuild {"instance"?, "projections", "fromSeq"?}`: starts
/// rebuilds as `imctl projections rebuild` does; their progress shows in
/// the status.
async fn start_rebuild(
    State(admin): State<Arc<Admin>>,
    Json(body): Json<RebuildBody>,
) -> Result<Json<Value>, AdminError> {
    if body.projections.is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "ERROR_CODE_BAD_REQUEST",
            "name a projection".into(),
        ));
    }
    let started = rebuild::start(
        &admin.client,
        &body.instance,
        body.projections,
        body.from_seq,
    )
    .await
    .map_err(unavailable)?;
    let rebuilds: Vec<Value> = started
        .iter()
        .map(|r| progress_json(&body.instance, r))
        .collect();
    Ok(Json(json!({ "rebuilds": rebuilds })))
}

fn progress_json(instance: &str, r: &v1::RebuildProgress) -> Value {
    json!({
        "instance": instance,
        "projection": r.projection,
        "generation": r.generation,
        "phase": r.phase().as_str_name().trim_start_matches("REBUILD_PHASE_").to_lowercase(),
        "folded": r.folded,
        "remaining": r.remaining,
        "startedMs": r.started_ms,
        "finishedMs": r.finished_ms,
    })
}
