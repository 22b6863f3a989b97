//! The gateway: axum HTTP API and WebSocket endpoint. Authenticates clients,
//! validates commands, appends through `im_streams::Appender`, and delivers
//! per-user subjects to connected devices.
//!
//! Not built yet (issue 4).
