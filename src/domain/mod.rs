//! Records, names, sharing and validation: the rules of the hub, without I/O.

pub mod error;
pub mod filter;
pub mod kind;
pub mod names;
pub mod paging;
pub mod partner;
pub mod record;
pub mod seal;
pub mod search;
pub mod sharing;
pub mod write;

pub use error::{Error, FieldViolation, Result};
pub use kind::{Kind, KindMessage};
