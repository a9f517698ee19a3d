//! # postback
//!
//! A sans-IO postback engine for affiliate networks and trackers: partner postbacks at three
//! levels with override precedence, macro templates that encode every value for its position,
//! and a delivery state machine that retries on a schedule and disables a postback after 25
//! failures, telling the network's manager.
//!
//! The crate reads no clock, opens no socket, spawns no thread and draws no randomness: callers
//! pass `now`, a jitter seed and an HTTP transport ([`transport::Transport`]).
//!
//! Layers, each using only those above it:
//!
//! | module | owns |
//! | --- | --- |
//! | [`template`] | parsing, dialects, encoding per position, currency first, money, lints |
//! | [`model`] | ids (trigger ids and delivery keys too), kinds, levels, methods, status and its transitions, corrections, the validated [`Postback`](model::Postback) |
//! | [`registry`] | indexed postbacks and precedence resolution, with reasons |
//! | [`access`] | who may change which postback, and the audit trail |
//! | [`delivery`] | one firing as a state machine over the values it keeps: retry policy, failure taxonomy, debug info, a postback's health and the disable decision |
//! | [`net`] | the network policy against server-side request forgery |
//! | [`plan`] | what a trigger creates: the pure decision both the engine and a store apply |
//! | [`engine`] | the in-memory home of deliveries over those decisions: `handle_*` in, `poll_*` out, checked snapshots |
//! | [`transport`] | the HTTP transport traits, clocks, and blocking and async drivers |
//! | [`presets`] | postback templates for well-known trackers |
//! | [`signing`] | signed postbacks (Standard Webhooks HMAC-SHA256, headers or query parameters) and the receiver's `verify`; the cryptography behind feature `signing` |
//!
//! `template` sits above `model` because a postback is validated by parsing its template when
//! it is built; the template engine itself knows nothing of postbacks.
//!
//! Delivery is at least once: a request whose answer never comes is sent again with the same
//! [`DeliveryKey`](model::DeliveryKey), which receivers use to drop duplicates.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod access;
pub mod delivery;
pub mod engine;
mod hash;
pub mod model;
pub mod net;
pub mod plan;
pub mod presets;
pub mod registry;
pub mod signing;
pub mod template;
pub mod transport;

// Keep the README's example compiling and true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
