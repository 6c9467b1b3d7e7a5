//! Vigil: a durable-run engine, an ops console and a chaos harness, built to
//! prove that nothing is lost when pods die.
#![forbid(unsafe_code)]

pub mod bench;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod console;
pub mod demo;
pub mod engine;
pub mod errors;
pub mod faults;
pub mod human;
pub mod logging;
pub mod pod;
