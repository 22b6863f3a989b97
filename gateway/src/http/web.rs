//! The web app's files at `/` (the built `clients/web`), and in development
//! stacks only, `POST /v1/dev/token`: a token for any user id, so the app's
//! sign-in form works against `imctl up` with nothing else to run.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use im_schema::v1;
use serde::Deserialize;

use super::ApiError;
use crate::AppState;

/// What the gateway serves besides the API.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    /// The built web app (`index.html` and its assets); none: no app at `/`.
    pub dir: Option<PathBuf>,
    /// `POST /v1/dev/token` answers: anyone may sign in as anyone. For a
    /// local development stack only; needs the HS256 secret to sign with.
    pub dev_login: bool,
}

/// How long a development token lasts: a working day, so a tab left open
/// keeps reconnecting without a new sign-in.
pub const DEV_TOKEN_TTL_SECS: u64 = 12 * 3600;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevTokenRequest {
    user_id: String,
}

/// `POST /v1/dev/token {"userId"}` -> `{"token", "expiresInSecs"}`; 404
/// unless the gateway runs with `dev_login`.
pub async fn dev_token(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Json(req): Json<DevTokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let web = &state.config.web;
    let secret = match (web.dev_login, &state.config.tokens.hs256_secret) {
        (true, Some(secret)) => secret,
        _ => {
            return Err(ApiError(
                v1::ErrorCode::NotFound,
                "development sign-in is off on this gateway".into(),
            ))
        }
    };
    // A page of another site resolving its name to 127.0.0.1 (DNS
    // rebinding) names its own host: only local pages get tokens.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return Err(ApiError(
            v1::ErrorCode::Forbidden,
            "development sign-in answers pages of this machine only".into(),
        ));
    }
    im_streams::ids::validate_id(im_streams::ids::IdKind::User, &req.user_id)
        .map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
    let token = crate::auth::issue_hs256(secret, &req.user_id, DEV_TOKEN_TTL_SECS);
    Ok(Json(serde_json::json!({
        "token": token,
        "expiresInSecs": DEV_TOKEN_TTL_SECS.to_string(),
    })))
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The router with the web app's files as its fallback: API routes first,
/// then `dir`'s files (`/` is `index.html`), else 404.
pub fn with_app(router: axum::Router, web: &WebConfig) -> axum::Router {
    match &web.dir {
        Some(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router.fallback(super::errors::not_found),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_this_machines_names_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(super::is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!super::is_loopback_host(host), "{host}");
        }
    }
}
