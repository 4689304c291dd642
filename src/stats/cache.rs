//! A worker's copy of each rendered statistics page, rebuilt at most every
//! 250 ms (SPEC section 12): rendering walks every route and server, so a
//! client reading the page in a loop would otherwise take the worker's time
//! from the traffic it serves.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::context::live::Live;

pub const MAX_AGE: Duration = Duration::from_millis(250);

/// The page formats, each cached on its own.
#[derive(Clone, Copy)]
pub enum Format {
    Prometheus = 0,
    Json = 1,
    Html = 2,
}

struct Page {
    built: Instant,
    /// The configuration it was built for: a reload shows at once. Weak, so
    /// the page does not keep an old configuration alive.
    live: Weak<Live>,
    body: Rc<[u8]>,
}

#[derive(Default)]
pub struct PageCache {
    pages: RefCell<[Option<Page>; 3]>,
}

impl PageCache {
    /// The page in `format`, rendered now if the cached one is older than
    /// [`MAX_AGE`] or from another configuration.
    pub fn get(&self, live: &Arc<Live>, format: Format) -> Rc<[u8]> {
        let now = Instant::now();
        let mut pages = self.pages.borrow_mut();
        let slot = &mut pages[format as usize];
        if let Some(p) = slot {
            if Weak::ptr_eq(&p.live, &Arc::downgrade(live)) && now.duration_since(p.built) < MAX_AGE
            {
                return p.body.clone();
            }
        }
        let body: Rc<[u8]> = match format {
            Format::Prometheus => super::render::prometheus_text(live),
            Format::Json => super::render::json(live),
            Format::Html => super::render::html(live),
        }
        .into();
        *slot = Some(Page {
            built: now,
            live: Arc::downgrade(live),
            body: body.clone(),
        });
        body
    }
}
