//! Service façades over the engine: the ingester's operations endpoints (`/health`,
//! Prometheus `/metrics`), and `bitvelocity serve`'s front doors over one query engine
//! that authenticates, authorizes (on the resolved plan, in one place) and bounds every
//! query whatever door it came through.
//!
//! It reads engine state only through what lower crates publish (here
//! [`ingestion::IngestMetrics`] and `lakehouse::query`) and must never be imported by them.

pub mod auth;
pub mod config;
pub mod engine;
mod error;
pub mod flight;
pub mod grants;
pub mod http;
pub mod metrics;
mod observed;
mod ops;
pub mod pg;
pub mod rest;
pub mod server;
pub mod tls;

pub use error::{Result, ServingError};
pub use ops::{ops_router, serve_ops};
