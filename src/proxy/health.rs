//! The `HealthURL`, answered by simian itself on every http listener, to any
//! client, never forwarded (SPEC section 11): `200` while serving, `503` from the
//! moment a SIGTERM arrives, so the L4 balancer in front takes this instance out
//! during its `ShutdownDelay`. Not logged: balancers ask every second or so.

use std::sync::Arc;

use crate::context::live::Live;
use crate::context::Worker;
use crate::http::{self, RequestHead};
use crate::net::{io as nio, Stream};

pub async fn serve(
    w: &Worker,
    live: &Arc<Live>,
    client: &Stream,
    head: &RequestHead,
) -> Option<usize> {
    let status = if w.shutdown.stopping() { 503 } else { 200 };
    let keep = head.keep_alive && head.framing == http::BodyFraming::None && !w.shutdown.started();
    let mut out = w.bufs.take();
    http::error_response_with(
        status,
        !keep,
        "Cache-Control: no-cache\r\n",
        head.method == http::Method::Head,
        &mut out,
    );
    let ok = nio::write_all(client, &out, live.config.global.idle_timeout)
        .await
        .is_ok();
    w.bufs.give(out);
    (ok && keep).then_some(head.head_len)
}
