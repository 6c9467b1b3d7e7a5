//! The engine core: runs, steps, the store, the executor. No UI, no HTTP.

pub mod authority;
pub mod clock;
pub mod dispatch;
pub mod executor;
pub mod janitor;
pub mod lanes;
pub mod lease;
pub mod metrics;
pub mod reaper;
pub mod recovery;
pub mod run;
pub mod settings;
pub mod store;
pub mod switches;
pub mod worker;
pub mod workflow;

pub use executor::{Engine, EngineConfig, EngineError, Fresh, RunOutcome, StepHook};
