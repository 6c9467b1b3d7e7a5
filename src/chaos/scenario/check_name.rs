//! The invariants a scenario is judged on, by name (the checkers are in
//! `chaos::checks`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    TerminalOnce,
    NoGhosts,
    StreamExactlyOnce,
    ExecutionsBounded,
    RawOutputsDownstream,
    NoHealthyReaped,
    RetriesAgree,
    DeathDetected,
    ClaimedOnce,
    Fencing,
    NoFalseDeaths,
    SelfFenced,
    ConsumerIsolated,
    OutcomesExplained,
    DurableAcks,
}

impl CheckName {
    pub const ALL: [CheckName; 15] = [
        CheckName::TerminalOnce,
        CheckName::NoGhosts,
        CheckName::StreamExactlyOnce,
        CheckName::ExecutionsBounded,
        CheckName::RawOutputsDownstream,
        CheckName::NoHealthyReaped,
        CheckName::RetriesAgree,
        CheckName::DeathDetected,
        CheckName::ClaimedOnce,
        CheckName::Fencing,
        CheckName::NoFalseDeaths,
        CheckName::SelfFenced,
        CheckName::ConsumerIsolated,
        CheckName::OutcomesExplained,
        CheckName::DurableAcks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::TerminalOnce => "terminal_once",
            CheckName::NoGhosts => "no_ghosts",
            CheckName::StreamExactlyOnce => "stream_exactly_once",
            CheckName::ExecutionsBounded => "executions_bounded",
            CheckName::RawOutputsDownstream => "raw_outputs_downstream",
            CheckName::NoHealthyReaped => "no_healthy_reaped",
            CheckName::RetriesAgree => "retries_agree",
            CheckName::DeathDetected => "death_detected",
            CheckName::ClaimedOnce => "claimed_once",
            CheckName::Fencing => "fencing",
            CheckName::NoFalseDeaths => "no_false_deaths",
            CheckName::SelfFenced => "self_fenced",
            CheckName::ConsumerIsolated => "consumer_isolated",
            CheckName::OutcomesExplained => "outcomes_explained",
            CheckName::DurableAcks => "durable_acks",
        }
    }

    pub fn invariant(self) -> &'static str {
        match self {
            CheckName::TerminalOnce => {
                "every run reaches exactly one terminal state; none in flight once quiet"
            }
            CheckName::NoGhosts => {
                "no transition out of a terminal state unless the policy allows it"
            }
            CheckName::StreamExactlyOnce => {
                "every attacher sees each chunk of the final run once, in order (reset honoured)"
            }
            CheckName::ExecutionsBounded => {
                "a step executes at most max_retries + 1 times; never again after it succeeded"
            }
            CheckName::RawOutputsDownstream => {
                "downstream steps see their predecessors' raw outputs, on any pod"
            }
            CheckName::NoHealthyReaped => "the reaper never times out a healthy run, on any lane",
            CheckName::RetriesAgree => {
                "every run the reaper timed out with retries left has its retry queued"
            }
            CheckName::DeathDetected => "a dead pod is detected within the liveness bound",
            CheckName::ClaimedOnce => "each orphan is claimed by exactly one survivor",
            CheckName::Fencing => "a pod that lost its claim writes nothing for the run afterwards",
            CheckName::NoFalseDeaths => {
                "no pod is declared dead unless it was stopped, killed or cut off (or the store was)"
            }
            CheckName::SelfFenced => {
                "a pod that cannot reach its store in time stops acting and goes unready before its lease can lapse"
            }
            CheckName::ConsumerIsolated => {
                "a slow client costs its pod bounded memory and slows no other run's stream"
            }
            CheckName::OutcomesExplained => {
                "a run ends succeeded unless its definition or the faults that hit it explain otherwise"
            }
            CheckName::DurableAcks => {
                "what a client was told (a submission, an ending, a finished stream) survives a power cut"
            }
        }
    }
}
