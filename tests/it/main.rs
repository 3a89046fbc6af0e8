//! Integration tests: the real hub over real mutual TLS. One binary, one
//! module per area.

mod audit;
mod auth;
mod cli;
mod cluster;
mod cost;
mod crash;
mod hardening;
mod listing;
mod metrics;
mod onboarding;
mod partners;
mod process;
mod props;
mod props_filter_sql;
mod records;
mod search;
mod search_cli;
mod standard;
mod store;
mod support;
mod sync;
mod sync_cli;
mod trust;
