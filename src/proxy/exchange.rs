//! One request on one backend connection: send the head and body, read the
//! response head (after any 1xx), send it to the client, move the body.
//!
//! Failures say how far the exchange got, because that decides what the caller may
//! do: before any response byte reached the client an error page can still be
//! sent, and a request that never left simian's buffer can be replayed on a fresh
//! connection.

use std::io;

use crate::config::Entry;
use crate::context::Worker;
use crate::http::{self, BodyFraming, ForwardInfo, Method, RequestHead, ResponseFraming};
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::proxy::{body, tunnel};

/// How long to wait for a backend's `100 Continue` before sending the body anyway.
const EXPECT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How an exchange ended, when the client got a complete response.
pub struct Done {
    /// Offset in the request buffer just past this request (pipelined bytes follow).
    pub consumed: usize,
    pub client_keep_alive: bool,
    pub backend_reusable: bool,
    pub status: u16,
    pub bytes_to_client: u64,
    /// Request body bytes as received (framing included for chunked).
    pub body_from_client: u64,
}

pub enum Fail {
    /// The backend failed before sending anything and the request is still wholly
    /// in simian's buffer: the caller may replay it on a fresh connection.
    Replayable(io::Error),
    /// Nothing reached the client: answer with this status.
    Status(u16, String),
    /// The client connection is unusable (it went away, or a response was cut).
    Abort(String),
}

fn backend_error(e: &io::Error) -> Fail {
    if e.kind() == io::ErrorKind::TimedOut {
        Fail::Status(504, "backend timed out".into())
    } else {
        Fail::Status(502, format!("backend error: {e}"))
    }
}

pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub peer: Peer,
    pub entry: &'a Entry,
    /// The pooled connection was reused (a failure may be the keep-alive race).
    pub reused: bool,
    /// Client-side stall limit (`IdleTimeout`).
    pub idle: std::time::Duration,
}

/// Bodies, tunnels and slow writes run in futures of their own (boxed when they
/// happen): inline, their state would make every request's future carry it, and
/// most requests have none of them (a request's future is 3.2 KB instead of 5.4).
pub async fn exchange(
    w: &Worker,
    client: &Stream,
    backend: &Stream,
    buf: &mut Vec<u8>,
    req: &Request<'_>,
) -> Result<Done, Fail> {
    let mut out = w.bufs.take();
    let r = exchange_inner(
        w,
        client,
        backend,
        buf,
        req,
        &mut out,
        req.idle,
        req.entry.timeouts.backend,
    )
    .await;
    w.bufs.give(out);
    r
}

#[allow(clippy::too_many_arguments)]
async fn exchange_inner(
    w: &Worker,
    client: &Stream,
    backend: &Stream,
    buf: &mut Vec<u8>,
    req: &Request<'_>,
    out: &mut Vec<u8>,
    idle: std::time::Duration,
    bt: std::time::Duration,
) -> Result<Done, Fail> {
    let head = req.head;
    let splice = req.entry.splice;
    let info = ForwardInfo {
        client_ip: req.peer.ip(),
        proto: "http",
        keep_backend_alive: true,
    };
    http::write_request_head(buf, head, &info, out);

    // Body bytes already read with the head ride in the same write.
    let body_start = head.head_len;
    let buffered = buf.len() - body_start;
    let (in_buf, rest) = match head.framing {
        BodyFraming::None => (0, 0),
        BodyFraming::ContentLength(n) => {
            let k = (n as usize).min(buffered);
            (k, n - k as u64)
        }
        BodyFraming::Chunked => (0, 0),
    };
    let has_body = head.framing != BodyFraming::None;
    let wait_continue = head.expect_continue && has_body;
    if !wait_continue {
        out.extend_from_slice(&buf[body_start..body_start + in_buf]);
    }
    // The whole request is in `out`, so it can be sent again on a fresh connection
    // when the pooled one turns out dead: any method when not one byte of it was
    // taken (the backend cannot have seen it; Go's net/http retries exactly then),
    // only an idempotent one once some of it may have arrived (RFC 9110 9.2.2).
    let whole = req.reused && rest == 0 && head.framing != BodyFraming::Chunked && !wait_continue;
    let replayable = whole && head.method.is_idempotent();
    let fail = |e: io::Error, resend: bool| {
        if resend {
            Fail::Replayable(e)
        } else {
            backend_error(&e)
        }
    };
    // The first send inline, to know whether anything at all left simian.
    let sent = match nio::try_write(backend, out) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(fail(e, whole)),
    };
    nio::write_all(backend, &out[sent..], bt)
        .await
        .map_err(|e| fail(e, replayable))?;

    let mut rbuf = w.bufs.take();
    let r = async {
        let mut consumed = body_start + in_buf;
        let mut body_in = in_buf as u64;
        let mut early: Option<http::ResponseHead> = None;
        // The backend gave its final answer without waiting for the body.
        let mut answered_early = false;
        if wait_continue {
            // The client waits for 100 before sending its body: read the backend's
            // answer first and relay the 100, or take its final response as is. A
            // backend that says nothing for a second (HTTP/1.0, or one ignoring
            // Expect) gets the body anyway, as curl itself does after a second.
            let first = read_response(backend, &mut rbuf, false, bt.min(EXPECT_WAIT)).await;
            let send_body = match first {
                Ok(rh) if rh.status == 100 => {
                    // Rewritten like any head: hop-by-hop fields stay on this hop.
                    http::write_response_head(&rbuf, &rh, false, out);
                    nio::write_all(client, out, idle)
                        .await
                        .map_err(|e| Fail::Abort(format!("client: {e}")))?;
                    rbuf.drain(..rh.head_len);
                    true
                }
                Ok(rh) => {
                    early = Some(rh);
                    answered_early = true;
                    false
                }
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => true,
                Err(e) => return Err(e.into_fail(false)),
            };
            if send_body {
                // The body: what came with the head first, then the socket.
                nio::write_all(backend, &buf[body_start..body_start + in_buf], bt)
                    .await
                    .map_err(|e| backend_error(&e))?;
            }
        }
        if early.is_none() {
            match head.framing {
                BodyFraming::ContentLength(_) => {
                    if rest > 0 {
                        Box::pin(body::forward_len(w, client, backend, rest, splice, idle))
                            .await
                            .map_err(|e| side_error(e, "request body"))?;
                    }
                    body_in += rest;
                }
                BodyFraming::Chunked => {
                    (consumed, body_in) = Box::pin(body::forward_chunked(
                        w, client, backend, buf, body_start, splice, idle,
                    ))
                    .await
                    .map_err(|e| side_error(e, "request body"))?;
                }
                BodyFraming::None => {}
            }
        }
        // Response head, after any interim responses.
        let is_head = head.method == Method::Head;
        let rh = loop {
            let rh = match early.take() {
                Some(rh) => rh,
                None => read_response(backend, &mut rbuf, is_head, bt)
                    .await
                    .map_err(|e| e.into_fail(replayable))?,
            };
            if rh.upgrade && !head.upgrade {
                return Err(Fail::Status(
                    502,
                    "backend switched protocols without being asked".into(),
                ));
            }
            if rh.is_interim() {
                http::write_response_head(&rbuf, &rh, false, out);
                nio::write_all(client, out, idle)
                    .await
                    .map_err(|e| Fail::Abort(format!("client: {e}")))?;
                rbuf.drain(..rh.head_len);
                continue;
            }
            break rh;
        };
        // A final answer before the body was sent (after Expect): the client's body
        // may still come, so this connection cannot carry another request.
        let body_skipped = answered_early;
        let client_keep = head.keep_alive
            && !w.shutdown.started()
            && rh.framing != ResponseFraming::CloseDelimited
            && !rh.upgrade
            && !body_skipped;
        http::write_response_head(&rbuf, &rh, client_keep, out);
        let head_bytes = out.len() as u64;
        let avail = rbuf.len() - rh.head_len;
        let (in_rbuf, rrest) = match rh.framing {
            ResponseFraming::ContentLength(n) => {
                let k = (n as usize).min(avail);
                (k, n - k as u64)
            }
            ResponseFraming::None => (0, 0),
            // Chunked and close-delimited bodies are streamed below.
            _ => (0, 0),
        };
        out.extend_from_slice(&rbuf[rh.head_len..rh.head_len + in_rbuf]);
        nio::write_all(client, out, idle)
            .await
            .map_err(|e| Fail::Abort(format!("client: {e}")))?;
        let mut sent = head_bytes + in_rbuf as u64;
        let mut backend_reusable = rh.keep_alive && !body_skipped;
        let cut = |e: io::Error| Fail::Abort(format!("response body: {e}"));
        match rh.framing {
            ResponseFraming::ContentLength(_) => {
                if rrest > 0 {
                    Box::pin(body::forward_len(w, backend, client, rrest, splice, bt))
                        .await
                        .map_err(cut)?;
                }
                sent += rrest;
                backend_reusable &= rbuf.len() == rh.head_len + in_rbuf;
            }
            ResponseFraming::Chunked => {
                let (end, n) = Box::pin(body::forward_chunked(
                    w,
                    backend,
                    client,
                    &mut rbuf,
                    rh.head_len,
                    splice,
                    bt,
                ))
                .await
                .map_err(cut)?;
                sent += n;
                backend_reusable &= rbuf.len() == end;
            }
            ResponseFraming::CloseDelimited => {
                if avail > 0 {
                    nio::write_all(client, &rbuf[rh.head_len..], idle)
                        .await
                        .map_err(cut)?;
                }
                sent += avail as u64
                    + Box::pin(body::forward_to_eof(w, backend, client, splice, bt))
                        .await
                        .map_err(cut)?;
                backend_reusable = false;
            }
            ResponseFraming::None => {
                backend_reusable &= rbuf.len() == rh.head_len;
            }
        }
        if rh.upgrade {
            // 101: from now on the two connections are one tunnel.
            let extra = &rbuf[rh.head_len..];
            if !extra.is_empty() {
                nio::write_all(client, extra, idle).await.map_err(cut)?;
            }
            let pending = &buf[consumed..];
            if !pending.is_empty() {
                nio::write_all(backend, pending, idle).await.map_err(cut)?;
            }
            consumed = buf.len();
            // Boxed: a tunnel's future is 3 KB, and inline it would make every
            // request's future carry it (upgrades are rare).
            Box::pin(tunnel::run(w, client, backend, idle)).await;
            return Ok(Done {
                consumed,
                client_keep_alive: false,
                backend_reusable: false,
                status: rh.status,
                bytes_to_client: sent,
                body_from_client: body_in,
            });
        }
        Ok(Done {
            consumed,
            client_keep_alive: client_keep,
            backend_reusable,
            status: rh.status,
            bytes_to_client: sent,
            body_from_client: body_in,
        })
    }
    .await;
    w.bufs.give(rbuf);
    r
}

/// An error while moving a request body: the client's fault or the backend's.
fn side_error(e: io::Error, what: &str) -> Fail {
    match e.kind() {
        io::ErrorKind::InvalidData => Fail::Status(400, format!("{what}: {e}")),
        io::ErrorKind::UnexpectedEof => Fail::Abort(format!("{what}: client closed early")),
        _ => Fail::Status(502, format!("{what}: {e}")),
    }
}

enum ReadError {
    /// EOF or reset before any byte of a response.
    Closed(io::Error),
    Io(io::Error),
    Bad(&'static str),
}

impl ReadError {
    fn into_fail(self, replayable: bool) -> Fail {
        match self {
            ReadError::Closed(e) if replayable => Fail::Replayable(e),
            ReadError::Closed(e) => {
                Fail::Status(502, format!("backend closed the connection: {e}"))
            }
            ReadError::Io(e) => backend_error(&e),
            ReadError::Bad(why) => {
                Fail::Status(502, format!("invalid response from backend: {why}"))
            }
        }
    }
}

async fn read_response(
    backend: &Stream,
    rbuf: &mut Vec<u8>,
    is_head: bool,
    t: std::time::Duration,
) -> Result<http::ResponseHead, ReadError> {
    loop {
        if !rbuf.is_empty() {
            match http::parse_response(rbuf, is_head) {
                Ok(h) => return Ok(h),
                Err(http::ResponseError::Incomplete) => {}
                Err(http::ResponseError::TooLarge) => return Err(ReadError::Bad("head too large")),
                Err(http::ResponseError::Bad(why)) => return Err(ReadError::Bad(why)),
            }
        }
        let was_empty = rbuf.is_empty();
        if was_empty {
            // The request was just sent: the answer cannot be there yet, so wait for
            // it instead of paying a read that returns EAGAIN.
            nio::readable(backend, t).await.map_err(ReadError::Io)?;
        }
        match nio::read(backend, rbuf, http::MAX_HEAD + 1, t).await {
            Ok(0) if was_empty => {
                return Err(ReadError::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before responding",
                )))
            }
            Ok(0) => return Err(ReadError::Bad("closed in the middle of the head")),
            Ok(_) => {}
            Err(e) if was_empty && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ReadError::Closed(e))
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}
