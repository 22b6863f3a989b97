//! Asking the projectors (never sled directly): one request per partition
//! subject, with a bounded wait.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

/// How long a query may take, `min_position` wait included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn ask(
    client: &async_nats::Client,
    partition: u32,
    pos: (u64, u64),
    query: Query,
) -> Result<R, v1::ErrorCode> {
    let req = v1::QueryRequest {
        min_position: pos.0,
        min_rcpt_position: pos.1,
        query: Some(query),
    };
    let subject = format!("im.q.{partition}");
    let reply = tokio::time::timeout(
        QUERY_TIMEOUT,
        client.request(subject, im_schema::encode(&req).into()),
    )
    .await
    .map_err(|_| v1::ErrorCode::Unavailable)?
    .map_err(|_| v1::ErrorCode::Unavailable)?;
    let resp: v1::QueryResponse =
        im_schema::decode(&reply.payload).map_err(|_| v1::ErrorCode::Internal)?;
    match resp.result {
        Some(R::Error(e)) => Err(match v1::QueryErrorCode::try_from(e.code) {
            Ok(v1::QueryErrorCode::NotYet) => v1::ErrorCode::Unavailable,
            Ok(v1::QueryErrorCode::BadRequest) => v1::ErrorCode::BadRequest,
            Ok(v1::QueryErrorCode::Forbidden) => v1::ErrorCode::Forbidden,
            Ok(v1::QueryErrorCode::NotFound) => v1::ErrorCode::NotFound,
            _ => v1::ErrorCode::Internal,
        }),
        Some(r) => Ok(r),
        None => Err(v1::ErrorCode::Internal),
    }
}
