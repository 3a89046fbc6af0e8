//! copex: a gRPC hub through which child-protection organisations exchange
//! workshop records, best-practice entries and a catalogue of tools over
//! mutually authenticated TLS.

pub mod allocator;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod domain;
pub mod feed;
pub mod metrics;
pub mod pb;
pub mod pki;
pub mod profile;
pub mod search;
pub mod server;
pub mod store;
pub mod telemetry;
