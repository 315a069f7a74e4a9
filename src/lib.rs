//! certswap: install a renewed TLS certificate on nginx or apache atomically,
//! prove with a TLS handshake that the live server serves it, and roll back
//! when it does not.
//!
//! # Layout
//! - [`cli`]       clap definitions only; the core never sees clap types.
//! - [`config`]    the TOML schema, defaults and validation of a config file; runs no program.
//! - [`cert`]      facts of one certificate: names, dates, spec, fingerprints.
//! - [`bundle`]    PEM/DER files → [`bundle::Bundle`] { leaf, chain, key }.
//! - [`validate`]  the rules of pipeline step 2, each a named check.
//! - [`manifest`]  the fleet manifest's format and the rollout bucket.
//! - [`publish`]   `manifest build`: a folder of renewals → a checked manifest.
//! - [`rollout`]   `rollout`: raise the manifest's percent wave by wave, gated by Prometheus.
//! - [`prometheus`] a small client of Prometheus's HTTP query API.
//! - [`matcher`]   which site (and dual-site pair) a bundle is for, for every source.
//! - [`fsio`]      durable file primitives: create-exclusive, fsync, rename.
//! - [`priority`]  a background thread's CPU priority, lowered beside the critical path.
//! - [`owner`]     who may have written a path: owner/mode checks before trust.
//! - [`store`]     stage / swap / backup versions / journal / recovery.
//! - [`server`]    the web servers behind one trait: config test and reload.
//! - [`service`]   the server steps of a change, in one place: config test, reload, restore.
//! - [`probe`]     TLS handshake probe, served-chain facts, wait-until-served.
//! - [`handshake`] one probe's client handshake, stopped once the server is judged.
//! - [`trust`]     trust anchors and the verdict on a chain (trusted, complete).
//! - [`wait`]      step 7's wait: many endpoints until each serves its leaf.
//! - [`install`]   steps 1–2 of the pipeline for one change; [`install::Env`].
//! - [`host`]      opening the host: endpoints discovered, server, probers, store.
//! - [`recover`]   the one owner of recovery: files back, service restored, old leaf proven.
//! - [`discover`]  the TLS sites in the nginx/apache config, as [[site]] blocks.
//! - [`adopt`]     move a site off certbot's `live/` (or acme.sh's) files onto own copies.
//! - [`batch`]     THE engine, steps 3–8 for N changes, one config test and one reload.
//! - [`status`]    every site at a glance: days left, state, drift.
//! - [`agent`]     the daemon loop: sources, batches, expiry and drift watch.
//! - [`source`]    where the agent's bundles come from: inbox, manifest, ACME stores, vendors.
//! - [`metrics`]   the agent's Prometheus metrics and its `/metrics` responder.
//! - [`hook`]      certbot / acme.sh deploy hook.
//! - [`report`]    text and JSON output of results.
//! - [`redact`]    URLs as logs, errors and metric labels may show them.
//! - [`failpoint`] test-only crash points (`CERTSWAP_FAILPOINT`).
//! - [`fleet_cmd`] the `manifest build` and `rollout` commands (the publisher's side).
//! - [`commands`]  one function per CLI command, wiring the pieces together.

pub mod adopt;
pub mod agent;
pub mod batch;
pub mod bundle;
pub mod cert;
pub mod cli;
pub mod commands;
pub mod config;
pub mod discover;
pub mod engines;
pub mod failpoint;
pub mod fleet_cmd;
pub mod fsio;
pub mod handshake;
pub mod hook;
pub mod host;
pub mod install;
pub mod manifest;
pub mod matcher;
pub mod metrics;
pub mod owner;
pub mod par;
pub mod priority;
pub mod probe;
pub mod prometheus;
pub mod publish;
pub mod recover;
pub mod redact;
pub mod report;
pub mod rollout;
pub mod server;
pub mod service;
pub mod source;
pub mod status;
pub mod store;
pub mod trust;
pub mod validate;
pub mod wait;
