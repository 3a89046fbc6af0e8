//! The newest feed position this hub instance knows of, and the wake-ups
//! of those waiting for a later one.
//!
//! Both backends advance it: SQLite after each commit (one process writes
//! the database), PostgreSQL after its own commits and whenever another
//! instance's commit is announced (LISTEN/NOTIFY) or seen by the poller.
//! Watchers, the search indexer and the metrics subscribe.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Head {
    sender: Arc<watch::Sender<i64>>,
}

impl Head {
    /// Starts at `seq`, the head as the database has it.
    pub fn new(seq: i64) -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(seq)),
        }
    }

    /// Moves the head to `seq` and wakes the subscribers, unless it is
    /// there or past it already: announcements may arrive late and out of
    /// order.
    pub fn advance(&self, seq: i64) {
        self.sender.send_if_modified(|known| {
            let newer = seq > *known;
            if newer {
                *known = seq;
            }
            newer
        });
    }

    /// The head now.
    pub fn current(&self) -> i64 {
        *self.sender.borrow()
    }

    /// A receiver that sees the head now and is woken at each advance.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::Head;

    #[test]
    fn the_head_only_moves_forward_and_wakes_on_a_move() {
        let head = Head::new(5);
        let mut watcher = head.subscribe();
        watcher.mark_unchanged();
        head.advance(4);
        head.advance(5);
        assert_eq!(head.current(), 5);
        assert!(!watcher.has_changed().unwrap());
        head.advance(9);
        assert!(watcher.has_changed().unwrap());
        assert_eq!(*watcher.borrow_and_update(), 9);
        head.clone().advance(12);
        assert_eq!(head.current(), 12);
    }
}
