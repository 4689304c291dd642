//! One request on one backend connection: send the head and body, read the
//! response head (after any 1xx), send it to the client, move the body.
//!
//! Failures say how far the exchange got, because that decides what the caller may
//! do: before any response byte reached the client an error page can still be
//! sent, and a request that never left simian's buffer can be replayed on a fresh
//! connection.

use std::io;
use std::time::Duration;

use crate::config::{Entry, SpliceMode};
use crate::context::Worker;
use crate::http::{
    self, BodyFraming, ForwardInfo, Method, RequestHead, ResponseFraming, ResponseHead,
};
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::proxy::{body, tunnel};

/// How long to wait for a backend's `100 Continue` before sending the body anyway.
const EXPECT_WAIT: Duration = Duration::from_secs(1);

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
    pub idle: Duration,
    /// `%{request_id}` (0 when no rule sends one).
    pub request_id: u64,
    /// The address appended to `X-Forwarded-For`: the connection's peer.
    pub hop: Option<std::net::IpAddr>,
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
    let ex = Exchange {
        w,
        client,
        backend,
        head: req.head,
        splice: req.entry.splice,
        idle: req.idle,
        bt: req.entry.timeouts.backend,
        interim: std::cell::Cell::new(0),
        entry: req.entry,
        client_ip: req.peer.ip(),
        request_id: req.request_id,
        host: if !req.entry.rules.response_headers.uses_host {
            Vec::new()
        } else {
            req.head
                .host
                .clone()
                .map_or(Vec::new(), |r| buf[r].to_vec())
        },
    };
    let mut out = w.bufs.take();
    let r = match ex.send_request(buf, req, &mut out).await {
        Ok(sent) => {
            let mut rbuf = w.bufs.take();
            let r = ex.respond(buf, &mut out, &mut rbuf, &sent).await;
            w.bufs.give(rbuf);
            r
        }
        Err(fail) => Err(fail),
    };
    w.bufs.give(out);
    r
}

/// What every step of one exchange reads.
struct Exchange<'a> {
    w: &'a Worker,
    client: &'a Stream,
    backend: &'a Stream,
    head: &'a RequestHead,
    splice: SpliceMode,
    /// Client-side stall limit (`IdleTimeout`).
    idle: Duration,
    /// Backend-side stall limit.
    bt: Duration,
    /// Interim (1xx) responses relayed so far for this request.
    interim: std::cell::Cell<u8>,
    /// The entry (its rules edit the heads).
    entry: &'a Entry,
    client_ip: Option<std::net::IpAddr>,
    request_id: u64,
    /// The request's `Host`, kept for `ResponseHeader` rules that use `%{host}`
    /// (empty when none does).
    host: Vec<u8>,
}

/// SPEC section 12: a backend may send at most this many interim (1xx)
/// responses before its final one; an endless stream of 103s is refused (502).
const MAX_INTERIM: u8 = 10;

/// What the first send took of the request, and what that leaves to do.
struct Sent {
    /// Offset of the request body in the client's buffer.
    body_start: usize,
    /// Body bytes read along with the head (Content-Length bodies only).
    in_buf: usize,
    /// Content-Length body bytes still with the client.
    rest: u64,
    /// The body waits for the backend's `100 Continue`: not one byte of it sent.
    wait_continue: bool,
    /// A backend that closes before answering may get the request again, on a
    /// fresh connection.
    replayable: bool,
}

impl Exchange<'_> {
    /// What `%{...}` stands for in this exchange's rules.
    fn vars<'h>(&'h self, host: &'h [u8]) -> crate::proxy::rules::Vars<'h> {
        crate::proxy::rules::Vars {
            client: self.client_ip,
            host,
            tls: self.client.is_tls(),
            route: &self.entry.name,
            request_id: self.request_id,
        }
    }

    /// `StripPrefix` and `RequestHeader` on the head written for the backend.
    fn edit_request(&self, buf: &[u8], req: &Request<'_>, out: &mut Vec<u8>) {
        let rules = &req.entry.rules;
        if let Some(p) = &rules.strip_prefix {
            crate::proxy::rules::strip_prefix(out, p);
        }
        if !rules.request_headers.is_empty() {
            let host = self.head.host.clone().map_or(&b""[..], |r| &buf[r]);
            crate::proxy::rules::edit_headers(out, &rules.request_headers, &self.vars(host));
        }
    }
    /// Send the request head, and with it the body bytes read along with it unless
    /// the client waits for `100 Continue`.
    async fn send_request(
        &self,
        buf: &[u8],
        req: &Request<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Sent, Fail> {
        let head = self.head;
        let info = ForwardInfo {
            client_ip: req.hop,
            proto: if self.client.is_tls() {
                "https"
            } else {
                "http"
            },
            keep_backend_alive: true,
            client_cert_subject: self.client.client_subject(),
        };
        http::write_request_head(buf, head, &info, out);
        let rules = &req.entry.rules;
        if rules.strip_prefix.is_some() || !rules.request_headers.is_empty() {
            self.edit_request(buf, req, out);
        }

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
        let whole =
            req.reused && rest == 0 && head.framing != BodyFraming::Chunked && !wait_continue;
        let replayable = whole && head.method.is_idempotent();
        let fail = |e: io::Error, resend: bool| {
            if resend {
                Fail::Replayable(e)
            } else {
                backend_error(&e)
            }
        };
        // The first send inline, to know whether anything at all left simian.
        let sent = match nio::try_write(self.backend, out) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(fail(e, whole)),
        };
        nio::write_all(self.backend, &out[sent..], self.bt)
            .await
            .map_err(|e| fail(e, replayable))?;
        Ok(Sent {
            body_start,
            in_buf,
            rest,
            wait_continue,
            replayable,
        })
    }

    /// Everything after the request head: the Expect wait, the request body, the
    /// response (after any interim ones), and the tunnel after a 101.
    async fn respond(
        &self,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        rbuf: &mut Vec<u8>,
        sent: &Sent,
    ) -> Result<Done, Fail> {
        let early = if sent.wait_continue {
            self.expect_continue(buf, rbuf, out, sent).await?
        } else {
            None
        };
        // A final answer before the body was sent (after Expect): the client's body
        // may still come, so this connection cannot carry another request.
        let body_skipped = early.is_some();
        let (mut consumed, body_from_client) = if body_skipped {
            (sent.body_start + sent.in_buf, sent.in_buf as u64)
        } else {
            self.forward_request_body(buf, sent).await?
        };
        let rh = self.final_head(rbuf, out, early, sent.replayable).await?;
        let client_keep = self.head.keep_alive
            && !self.w.shutdown.started()
            && rh.framing != ResponseFraming::CloseDelimited
            && !rh.upgrade
            && !body_skipped;
        let (bytes_to_client, clean_end) = self.send_response(rbuf, out, &rh, client_keep).await?;
        if rh.upgrade {
            self.upgrade(buf, rbuf, consumed, &rh).await?;
            consumed = buf.len();
        }
        Ok(Done {
            consumed,
            client_keep_alive: client_keep,
            // After a 101 the tunnel has used the connection up.
            backend_reusable: rh.keep_alive && !body_skipped && clean_end && !rh.upgrade,
            status: rh.status,
            bytes_to_client,
            body_from_client,
        })
    }

    /// The client waits for 100 before sending its body: read the backend's
    /// answer first and relay the 100, or take its final response as is. A
    /// backend that says nothing for a second (HTTP/1.0, or one ignoring
    /// Expect) gets the body anyway, as curl itself does after a second.
    ///
    /// `Some` final response when the backend answered without the body; `None`
    /// once the body bytes read with the head are sent.
    async fn expect_continue(
        &self,
        buf: &[u8],
        rbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        sent: &Sent,
    ) -> Result<Option<ResponseHead>, Fail> {
        let deadline = std::time::Instant::now() + self.bt.min(EXPECT_WAIT);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match read_response(self.backend, rbuf, false, left).await {
                Ok(rh) if rh.status == 100 => {
                    self.relay_interim(rbuf, &rh, out).await?;
                    break;
                }
                // Other interim answers (103 Early Hints) are relayed and the wait
                // goes on: they are not the backend's decision about the body.
                Ok(rh) if rh.is_interim() => self.relay_interim(rbuf, &rh, out).await?,
                Ok(rh) => return Ok(Some(rh)),
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => break,
                Err(e) => return Err(e.into_fail(false)),
            }
        }
        // The body: what came with the head first, then the socket.
        let in_buf = &buf[sent.body_start..sent.body_start + sent.in_buf];
        nio::write_all(self.backend, in_buf, self.bt)
            .await
            .map_err(|e| backend_error(&e))?;
        Ok(None)
    }

    /// The request body past what the first send took. Returns the offset in `buf`
    /// just past the request and the body bytes received.
    async fn forward_request_body(
        &self,
        buf: &mut Vec<u8>,
        sent: &Sent,
    ) -> Result<(usize, u64), Fail> {
        let (w, client, backend) = (self.w, self.client, self.backend);
        let consumed = sent.body_start + sent.in_buf;
        match self.head.framing {
            BodyFraming::ContentLength(_) => {
                if sent.rest > 0 {
                    Box::pin(body::forward_len(
                        w,
                        client,
                        backend,
                        sent.rest,
                        self.splice,
                        self.idle,
                    ))
                    .await
                    .map_err(|e| side_error(e, "request body"))?;
                }
                Ok((consumed, sent.in_buf as u64 + sent.rest))
            }
            BodyFraming::Chunked => Box::pin(body::forward_chunked(
                w,
                client,
                backend,
                buf,
                sent.body_start,
                self.splice,
                self.idle,
                self.entry.rules.max_body,
            ))
            .await
            .map_err(|e| side_error(e, "request body")),
            BodyFraming::None => Ok((consumed, sent.in_buf as u64)),
        }
    }

    /// The final response head, after relaying any interim ones; `early` is one
    /// read already (the answer to Expect).
    async fn final_head(
        &self,
        rbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        mut early: Option<ResponseHead>,
        replayable: bool,
    ) -> Result<ResponseHead, Fail> {
        let is_head = self.head.method == Method::Head;
        loop {
            let rh = match early.take() {
                Some(rh) => rh,
                None => read_response(self.backend, rbuf, is_head, self.bt)
                    .await
                    .map_err(|e| e.into_fail(replayable))?,
            };
            if rh.upgrade && !self.head.upgrade {
                return Err(Fail::Status(
                    502,
                    "backend switched protocols without being asked".into(),
                ));
            }
            if !rh.is_interim() {
                return Ok(rh);
            }
            self.relay_interim(rbuf, &rh, out).await?;
        }
    }

    /// Relay an interim (1xx) head to the client, rewritten like any head:
    /// hop-by-hop fields stay on this hop.
    async fn relay_interim(
        &self,
        rbuf: &mut Vec<u8>,
        rh: &ResponseHead,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        if self.interim.get() >= MAX_INTERIM {
            return Err(Fail::Status(
                502,
                format!("backend sent more than {MAX_INTERIM} interim responses"),
            ));
        }
        self.interim.set(self.interim.get() + 1);
        http::write_response_head(rbuf, rh, false, false, out);
        nio::write_all(self.client, out, self.idle)
            .await
            .map_err(client_error)?;
        rbuf.drain(..rh.head_len);
        Ok(())
    }

    /// Send the response head, with the body bytes read along with it in the same
    /// write, then the rest of the body. Returns the bytes sent to the client and
    /// whether the backend connection stopped exactly at the response's end.
    async fn send_response(
        &self,
        rbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        rh: &ResponseHead,
        client_keep: bool,
    ) -> Result<(u64, bool), Fail> {
        http::write_response_head(rbuf, rh, client_keep, self.head.version_minor == 0, out);
        if !self.entry.rules.response_headers.is_empty() {
            let vars = self.vars(&self.host);
            crate::proxy::rules::edit_headers(out, &self.entry.rules.response_headers, &vars);
        }
        let head_bytes = out.len() as u64;
        let in_rbuf = match rh.framing {
            ResponseFraming::ContentLength(n) => (n as usize).min(rbuf.len() - rh.head_len),
            // Chunked and close-delimited bodies are streamed below.
            _ => 0,
        };
        out.extend_from_slice(&rbuf[rh.head_len..rh.head_len + in_rbuf]);
        nio::write_all(self.client, out, self.idle)
            .await
            .map_err(client_error)?;
        let (rest, clean_end) = self.forward_response_body(rbuf, rh, in_rbuf).await?;
        Ok((head_bytes + in_rbuf as u64 + rest, clean_end))
    }

    /// The response body past the `in_rbuf` bytes sent with the head. Returns the
    /// bytes moved and whether nothing past the body was read.
    async fn forward_response_body(
        &self,
        rbuf: &mut Vec<u8>,
        rh: &ResponseHead,
        in_rbuf: usize,
    ) -> Result<(u64, bool), Fail> {
        let (w, client, backend, splice, bt) =
            (self.w, self.client, self.backend, self.splice, self.bt);
        match rh.framing {
            ResponseFraming::ContentLength(n) => {
                let rest = n - in_rbuf as u64;
                if rest > 0 {
                    Box::pin(body::forward_len(w, backend, client, rest, splice, bt))
                        .await
                        .map_err(cut)?;
                }
                Ok((rest, rbuf.len() == rh.head_len + in_rbuf))
            }
            ResponseFraming::Chunked => {
                let (end, n) = Box::pin(body::forward_chunked(
                    w,
                    backend,
                    client,
                    rbuf,
                    rh.head_len,
                    splice,
                    bt,
                    0,
                ))
                .await
                .map_err(cut)?;
                Ok((n, rbuf.len() == end))
            }
            ResponseFraming::CloseDelimited => {
                let avail = rbuf.len() - rh.head_len;
                if avail > 0 {
                    nio::write_all(client, &rbuf[rh.head_len..], self.idle)
                        .await
                        .map_err(cut)?;
                }
                let n = Box::pin(body::forward_to_eof(w, backend, client, splice, bt))
                    .await
                    .map_err(cut)?;
                Ok((avail as u64 + n, false))
            }
            ResponseFraming::None => Ok((0, rbuf.len() == rh.head_len)),
        }
    }

    /// 101: from now on the two connections are one tunnel. Bytes either side sent
    /// past the handshake were read already and go first.
    async fn upgrade(
        &self,
        buf: &[u8],
        rbuf: &[u8],
        consumed: usize,
        rh: &ResponseHead,
    ) -> Result<(), Fail> {
        let extra = &rbuf[rh.head_len..];
        if !extra.is_empty() {
            nio::write_all(self.client, extra, self.idle)
                .await
                .map_err(cut)?;
        }
        let pending = &buf[consumed..];
        if !pending.is_empty() {
            nio::write_all(self.backend, pending, self.idle)
                .await
                .map_err(cut)?;
        }
        // Boxed: a tunnel's future is 3 KB, and inline it would make every
        // request's future carry it (upgrades are rare).
        Box::pin(tunnel::run(self.w, self.client, self.backend, self.idle)).await;
        Ok(())
    }
}

/// Writing to the client failed: its connection is unusable.
fn client_error(e: io::Error) -> Fail {
    Fail::Abort(format!("client: {e}"))
}

/// The response was cut: the client has part of it, no error page can follow.
fn cut(e: io::Error) -> Fail {
    Fail::Abort(format!("response body: {e}"))
}

/// An error while moving a request body: the client's fault or the backend's.
fn side_error(e: io::Error, what: &str) -> Fail {
    match e.kind() {
        io::ErrorKind::InvalidData => Fail::Status(400, format!("{what}: {e}")),
        io::ErrorKind::FileTooLarge => Fail::Status(413, format!("{what}: {e}")),
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
    t: Duration,
) -> Result<ResponseHead, ReadError> {
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
