//! HTTP/1.x codec for the data plane: pure functions over byte buffers, no
//! I/O, no async, no allocation per request beyond the caller's reused
//! buffers.
//!
//! - [`parse_request`] / [`parse_response`] read a head (httparse underneath,
//!   plus the checks httparse leaves out: bare LF, framing header rules) and
//!   return byte ranges into the caller's buffer.
//! - [`ChunkedScanner`] follows a chunked body that is forwarded unchanged,
//!   telling framing bytes from data bytes so data can be spliced.
//! - [`write_request_head`] / [`write_response_head`] / [`error_response`]
//!   build the heads simian sends.
//! - [`normalize_path`] gives the path that routing matches on.
//!
//! Strictness follows SPEC §4: anything two implementations could frame
//! differently is refused, never guessed.

pub mod chunked;
mod fields;
pub mod path;
pub mod request;
pub mod response;
pub mod rewrite;

pub use chunked::{ChunkError, ChunkStep, ChunkedScanner, MAX_CHUNK_LINE, MAX_TRAILERS};
pub use fields::{cannot_start_a_request, head_may_be_complete, is_tchar, HeaderLine, Headers};
pub use path::normalize_path;
pub use request::{parse_request, BodyFraming, Method, RequestError, RequestHead};
pub use response::{parse_response, ResponseError, ResponseFraming, ResponseHead};
pub use rewrite::{
    error_response, error_response_with, status_text, write_request_head, write_response_head,
    ForwardInfo,
};

/// Largest request or response head, leading empty lines included.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a head; more is answered like an oversized head.
pub const MAX_HEADERS: usize = 100;

#[cfg(test)]
mod fuzz_tests;
