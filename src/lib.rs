//! # postback
//!
//! A sans-IO postback engine for affiliate networks and trackers: partner postbacks at three
//! levels with override precedence, macro templates that encode every value for its position,
//! and (in later layers) a delivery state machine that disables a postback after 25 failures.
//!
//! The crate reads no clock, opens no socket, spawns no thread and draws no randomness: callers
//! pass `now`, jitter and an HTTP transport.
//!
//! Layers, each using only those above it:
//!
//! | module | owns |
//! | --- | --- |
//! | [`template`] | parsing, dialects, encoding per position, currency first, lints |
//! | [`model`] | ids, kinds, levels, methods, status, the validated [`Postback`](model::Postback) |
//! | [`registry`] | indexed postbacks and precedence resolution |
//! | [`access`] | who may change which postback, and the audit trail |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod access;
pub mod delivery;
pub mod engine;
mod hash;
pub mod model;
pub mod net;
pub mod presets;
pub mod registry;
pub mod template;
pub mod transport;

// Keep the README's example compiling and true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
