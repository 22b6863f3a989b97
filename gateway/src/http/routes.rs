//! Every route the gateway serves, in one table: the router is built from
//! it, and a test holds it equal to `docs/openapi.yaml` (the spec served at
//! `/v1/openapi.json`).

use std::sync::{Arc, OnceLock};

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::{http, ws, AppState};

/// The API's specification, as written in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// (method, path, handler) of every route; a path may appear once per method.
pub fn api_routes() -> Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)> {
    use http::{commands, media, notify, people, queries, search, status, web};
    vec![
        (Method::GET, "/v1/ws", get(ws::upgrade)),
        (Method::GET, "/v1/history", get(queries::history)),
        (
            Method::GET,
            "/v1/conversations",
            get(queries::conversations),
        ),
        (
            Method::POST,
            "/v1/conversations",
            post(commands::create_group),
        ),
        (
            Method::GET,
            "/v1/conversations/{id}/members",
            get(queries::members),
        ),
        (
            Method::GET,
            "/v1/conversations/{id}/receipts",
            get(queries::receipts),
        ),
        (
            Method::GET,
            "/v1/conversations/{id}/role/me",
            get(queries::my_role),
        ),
        (
            Method::POST,
            "/v1/conversations/{id}/{verb}",
            post(commands::command),
        ),
        (
            Method::POST,
            "/v1/conversations/{id}/{verb}/{target}",
            post(commands::command),
        ),
        (Method::GET, "/v1/presence", get(http::presence::presence)),
        (Method::GET, "/v1/me", get(people::me)),
        (Method::PUT, "/v1/me/profile", put(people::put_profile)),
        (Method::PUT, "/v1/me/privacy", put(people::put_privacy)),
        (Method::GET, "/v1/me/contacts", get(people::contacts)),
        (Method::GET, "/v1/users/profiles", get(people::profiles)),
        (
            Method::POST,
            "/v1/devices/{deviceId}/push",
            post(notify::register),
        ),
        (
            Method::DELETE,
            "/v1/devices/{deviceId}/push",
            delete(notify::unregister),
        ),
        (Method::GET, "/v1/me/notifications", get(notify::settings)),
        (
            Method::PUT,
            "/v1/me/notifications",
            put(notify::do_not_disturb),
        ),
        (
            Method::PUT,
            "/v1/me/notifications/conversations/{conversationId}",
            put(notify::mute_conversation),
        ),
        (Method::GET, "/v1/search/messages", get(search::messages)),
        (
            Method::GET,
            "/v1/search/conversations",
            get(search::conversations),
        ),
        (Method::GET, "/v1/search/users", get(search::users)),
        (
            Method::POST,
            "/v1/contacts/{userId}/{verb}",
            post(people::contact_command),
        ),
        (Method::POST, "/v1/media/upload", post(media::upload)),
        (Method::POST, "/v1/media/sts", post(media::sts)),
        (Method::GET, "/v1/media/{id}", get(media::download)),
        (
            Method::POST,
            "/v1/media/{id}/complete",
            post(media::complete),
        ),
        (
            Method::PUT,
            "/v1/media/{id}/content",
            put(media::put_content),
        ),
        (Method::POST, "/v1/dev/token", post(web::dev_token)),
        (Method::GET, "/v1/openapi.json", get(openapi)),
        (Method::GET, "/healthz", get(status::healthz)),
        (Method::GET, "/readyz", get(status::readyz)),
    ]
}

pub fn router(state: Arc<AppState>) -> Router {
    let web = state.config.web.clone();
    let api = api_routes()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .with_state(state.clone());
    // After the app's files, so that a path neither serves is answered in
    // the API's error shape too; measured as answered.
    http::web::with_app(api, &web)
        .layer(axum::middleware::map_response(http::errors::uniform))
        .layer(axum::middleware::from_fn_with_state(state, track))
}

/// Times each request by its route's pattern and status, and counts its
/// refusal, if any.
async fn track(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A fixed set: a client can send any method token.
    let method = match *req.method() {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD => {
            req.method().as_str()
        }
        _ => "OTHER",
    }
    .to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    if let Some(http::errors::Refusal(code)) = resp.extensions().get() {
        state.metrics.rejected(code);
    }
    let status = resp.status().as_u16();
    let labels = crate::metrics::Route {
        method,
        route,
        status,
    };
    state
        .metrics
        .http
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The spec as JSON: parsed once, at the first request (a spec that does
/// not parse is a build that fails its tests, never a running gateway).
pub fn openapi_json() -> &'static serde_json::Value {
    static SPEC: OnceLock<serde_json::Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_yaml_ng::from_str(OPENAPI_YAML).expect("docs/openapi.yaml is valid YAML")
    })
}

async fn openapi() -> Response {
    axum::Json(openapi_json()).into_response()
}
