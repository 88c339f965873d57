//! One integration crate: every test runs the real binary over real sockets (ripgrep style).
//! Themes live in tests/e2e/*.rs.
mod support;

#[path = "e2e/edge.rs"]
mod edge;

#[path = "e2e/fastpath.rs"]
mod fastpath;

#[path = "e2e/config.rs"]
mod config;

#[path = "e2e/control.rs"]
mod control;

#[path = "e2e/switching.rs"]
mod switching;

#[path = "e2e/release.rs"]
mod release;

#[path = "e2e/envs_sync.rs"]
mod envs_sync;

#[path = "e2e/health.rs"]
mod health;

#[path = "e2e/hardening.rs"]
mod hardening;

#[path = "e2e/fuzz.rs"]
mod fuzz;

#[path = "e2e/mediawiki.rs"]
mod mediawiki;

#[path = "e2e/http_rules.rs"]
mod http_rules;

#[path = "e2e/sets.rs"]
mod sets;

#[path = "e2e/operator.rs"]
mod operator;

#[path = "e2e/acme.rs"]
mod acme;

#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/fuzz_regressions.rs"]
mod fuzz_regressions;

#[path = "e2e/offsite.rs"]
mod offsite;
#[path = "e2e/online.rs"]
mod online;

#[path = "e2e/swarm.rs"]
mod swarm;
