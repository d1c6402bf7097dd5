//! Baton's integration tests: each module is a scenario that starts the real
//! binaries on loopback ports chosen at run time, against real git
//! repositories in temp dirs, and asserts on what a user sees (`baton ...
//! --json`, files in the data dir).

mod chaos;
mod client;
mod culprit;
mod deployments;
mod durability;
mod flaky;
mod flood;
mod follow;
mod foundation;
mod full_disk;
mod liveness;
mod logs;
mod manager;
mod newcomer;
mod observer;
mod operator;
mod orphans;
mod releases;
mod runner_liveness;
mod schedules;
mod security;
mod statuses;
mod support;
mod tls;
mod users;
mod web;
mod web_browser;
mod webhooks;
