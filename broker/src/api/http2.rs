//! Every HTTP/2 limit of the server, set explicitly: the defaults of tonic, hyper and h2 differ and
//! change between versions (tonic's `None` for local error resets even turns hyper's limit off).
//! Proven by `tests/e2e/hostile_input.rs`: the advertised settings, a rapid-reset flood, huge
//! metadata and oversized messages.

use std::time::Duration;

use tonic::transport::Server;

use crate::config::Limits;

/// Streams a client opens and resets before the server accepted them (CVE-2023-44487, "rapid
/// reset"): past this many pending at once, the connection gets GOAWAY (ENHANCE_YOUR_CALM).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 64;
/// Streams the server itself resets because the client broke the protocol on them: past this many,
/// GOAWAY. Bounds the work a misbehaving client makes us do.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// The largest frame we accept: the protocol's initial value (16 KiB); larger frames buy nothing
/// for messages of at most `limits.max_message_bytes`.
pub const MAX_FRAME_BYTES: u32 = 16 * 1024;
/// Flow-control windows: what a client may send before we read it, per stream and per connection.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// A connection that does not answer a ping within the timeout is closed, so dead peers do not hold
/// streams (and watch subscriptions) forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the HTTP/2 limits (and the per-RPC bound) to `server`.
///
/// Not set, on purpose: `max_connection_age` (it would cut the long-lived kill-switch and approval
/// watch streams; idle dead peers are caught by the keepalive instead) and a per-connection
/// concurrency limit (`max_concurrent_streams` already bounds a connection, and the global
/// and per-caller limits of `api::admission` shed load with RESOURCE_EXHAUSTED).
pub fn limit<L>(server: Server<L>, limits: &Limits) -> Server<L> {
    server
        // gRPC is HTTP/2 only.
        .accept_http1(false)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Fixed windows: adaptive ones would override the two above.
        .http2_adaptive_window(Some(false))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Upper bound on any RPC, whatever deadline (`grpc-timeout`) the client sent; a `grpc-timeout`
        // that does not parse is ignored, so this bound still holds.
        .timeout(limits.request_timeout)
}
