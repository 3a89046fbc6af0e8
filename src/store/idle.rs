//! Idle connections kept between direct reads (`Backend::read_by_name` on
//! both backends, the feed on SQLite), outside sqlx's pools: a pooled
//! connection costs a ping each time it goes back (a hand-off to SQLite's
//! connection thread, a round trip to PostgreSQL), as much as a Get's read.

use std::sync::{Mutex, PoisonError};

pub struct IdleConnections<C> {
    idle: Mutex<Vec<C>>,
    /// Idle connections kept at most; more are closed after use.
    keep: usize,
}

impl<C> IdleConnections<C> {
    pub const fn new(keep: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// An idle connection, if there is one.
    pub fn take(&self) -> Option<C> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Keeps `conn` for the next read, or closes it (drops it) when enough
    /// are idle already.
    pub fn put_back(&self, conn: C) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(conn);
        }
    }
}
