//! The gateway's limits (I18): each a flag and an environment variable
//! (`IM_GATEWAY_<NAME>`), with its default and why.

use serde::Deserialize;

/// Defines `Limits` once: the struct (a clap argument group), its defaults,
/// and the environment each limit is read from.
macro_rules! limits {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $default:expr, $env:literal; )*) => {
        /// Per-connection and per-gateway limits (I18).
        #[derive(Clone, Debug, PartialEq, Eq, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields, default)]
        pub struct Limits {
            $( $(#[$doc])* #[arg(long, env = $env, default_value_t = $default)] pub $field: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $field: $default, )* }
            }
        }

        impl Limits {
            /// Every limit as the environment variable it is read from, with
            /// its value: how to hand these limits to a gateway process.
            pub fn to_env(&self) -> Vec<(&'static str, String)> {
                vec![$( ($env, self.$field.to_string()), )*]
            }
        }
    };
}

limits! {
    /// Largest WebSocket frame/message. A send carries at most 16 KiB of
    /// text plus metadata; 64 KiB leaves room and stops abuse early.
    frame_bytes_max: usize = 64 * 1024, "IM_GATEWAY_FRAME_BYTES_MAX";
    /// Envelopes in one binary frame.
    envelopes_per_frame_max: usize = 64, "IM_GATEWAY_ENVELOPES_PER_FRAME_MAX";
    /// Sends per second per connection (token bucket refill) and burst.
    sends_per_sec: u32 = 20, "IM_GATEWAY_SENDS_PER_SEC";
    /// Sends one connection may make at once before the rate applies.
    send_burst: u32 = 40, "IM_GATEWAY_SEND_BURST";
    /// Conversation commands per second per user on this gateway, whichever
    /// way they come: every device's sends and every HTTP command (a
    /// group's administration, edits, recalls) draw on one bucket
    /// (receipts and typing are cursors and notices, bounded per
    /// connection by its command queue). Twice one
    /// connection's send rate, so two devices in use at once are not cut
    /// short, while a user with sixteen devices or threads cannot append
    /// sixteen times as fast. (Per gateway: a user spread over N gateways
    /// gets N times this.)
    user_sends_per_sec: u32 = 40, "IM_GATEWAY_USER_SENDS_PER_SEC";
    /// Commands one user may make at once, all ways together.
    user_send_burst: u32 = 80, "IM_GATEWAY_USER_SEND_BURST";
    /// Frames waiting to be written to one client; a client that lets it
    /// fill is closed with `CLOSE_RESYNC` and must resync.
    outbound_queue_max: usize = 256, "IM_GATEWAY_OUTBOUND_QUEUE_MAX";
    /// Every command (send, receipt, sync, HTTP command) is answered within
    /// this: with its outcome, or with a `timeout` error the client retries
    /// with the same id. Longer than a command's worst honest path (a few
    /// conflict rounds, one forward, an index lookup), short enough that a
    /// person waiting sees an answer.
    command_timeout_ms: u64 = 10_000, "IM_GATEWAY_COMMAND_TIMEOUT_MS";
    /// Commands read from one connection and waiting for their turn (they
    /// run one at a time, in order). Past it a command is refused at once
    /// (`rate_limited`), so a client that pipelines faster than its
    /// commands complete hears back instead of waiting on TCP. Two full
    /// frames: bounds a connection's queued input to 2 x `frame_bytes_max`.
    commands_queued_max: usize = 128, "IM_GATEWAY_COMMANDS_QUEUED_MAX";
    /// A connection silent this long is closed.
    heartbeat_window_ms: u64 = 45_000, "IM_GATEWAY_HEARTBEAT_WINDOW_MS";
    /// WebSocket connections on this gateway: ~4.4 KB each idle (BENCHMARKS.md).
    connections_max: usize = 20_000, "IM_GATEWAY_CONNECTIONS_MAX";
    /// Devices of one user connected at once (close 1008 past it).
    connections_per_user_max: usize = 16, "IM_GATEWAY_CONNECTIONS_PER_USER_MAX";
    /// WebSocket connections from one client address: a NAT'd office or
    /// campus shares one, so generous; past it a flood must come from
    /// many addresses.
    connections_per_ip_max: usize = 1_000, "IM_GATEWAY_CONNECTIONS_PER_IP_MAX";
    /// tungstenite's read buffer, resident for the connection's life: a
    /// client frame is a few hundred bytes (a send, an ack, a heartbeat),
    /// and a larger one grows the buffer for itself only, so 1 KiB keeps an
    /// idle connection small without a syscall per few bytes.
    ws_read_buffer_bytes: usize = 1024, "IM_GATEWAY_WS_READ_BUFFER_BYTES";
    /// Bytes tungstenite gathers before it writes (the writer flushes each
    /// batch anyway): not allocated up front.
    ws_write_buffer_bytes: usize = 4 * 1024, "IM_GATEWAY_WS_WRITE_BUFFER_BYTES";
    /// Largest upload through the gateway (streamed to a temp file).
    media_upload_bytes_max: u64 = 16 * 1024 * 1024, "IM_GATEWAY_MEDIA_UPLOAD_BYTES_MAX";
    /// Largest presigned upload (straight to storage).
    media_large_bytes_max: u64 = 1024 * 1024 * 1024, "IM_GATEWAY_MEDIA_LARGE_BYTES_MAX";
    /// Bytes a user may have accepted per UTC day, both paths together.
    media_quota_bytes_per_day: u64 = 2 * 1024 * 1024 * 1024, "IM_GATEWAY_MEDIA_QUOTA_BYTES_PER_DAY";
    /// Lifetime of presigned URLs and pending uploads.
    media_url_ttl_secs: u64 = 900, "IM_GATEWAY_MEDIA_URL_TTL_SECS";
}
