//! Replayable traces of the replication core (style principle 2: "a
//! recorded JSONL trace replays a production incident"). Owns the trace
//! format, the [`Recorder`] that writes it while a core runs, and
//! [`replay`], which rebuilds the core and checks that the same inputs
//! still give exactly the recorded outputs.
//!
//! # Format
//!
//! JSON lines, one object per line. The first line is the header: what the
//! core was built from ([`Init`]) at `now_ms`, and what building it output
//! ([`Core::start`]):
//!
//! ```text
//! {"trace":"esc-repl","version":1,"now_ms":0,"init":{"config":{..},"role":"primary",
//!  "epoch":1,"log":{..},"applied_index":0,"commit_alone":true},"outputs":[]}
//! ```
//!
//! Every further line is one [`Core::handle`] call, in call order:
//!
//! ```text
//! {"now_ms":20,"input":{"Propose":{"token":1,"payload":[119,49]}},"outputs":[{"Persist":{..}}]}
//! ```
//!
//! `input` is an [`Input`], `outputs` the [`Output`]s it returned, both in
//! serde's default (externally tagged) JSON; byte fields (payloads, nonces)
//! are arrays of numbers. Blank lines are skipped. Every field is required
//! and no other is accepted, so a trace from another format version is
//! refused instead of replayed with guesses.
//!
//! The generic part ([`Replayable`], [`Recorder`], [`replay_as`],
//! [`Mismatch`]) is `esc_trace`'s, shared with `esc_authority::trace`.

use crate::{Config, Core, Input, LogView, Output, Role};
use serde::{Deserialize, Serialize};

pub use esc_trace::{replay_as, Mismatch, Recorder, Replayable, VERSION};

/// What [`Core::new`] takes, plus the start-up commit-alone gate
/// ([`Core::set_commit_alone`]): everything a core is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Init {
    pub config: Config,
    pub role: Role,
    pub epoch: u64,
    pub log: LogView,
    pub applied_index: u64,
    /// The commit-alone gate the core starts with (off in witness mode).
    pub commit_alone: bool,
}

impl Replayable for Core {
    const TRACE: &'static str = "esc-repl";
    type Init = Init;
    type Input = Input;
    type Output = Output;

    /// `Core::new`, `set_commit_alone`, then `start`: how a runtime brings
    /// a core up, so the start-up outputs are in the trace too.
    fn build(init: &Init, now_ms: u64) -> (Core, Vec<Output>) {
        let mut core = Core::new(
            init.config.clone(),
            init.role,
            init.epoch,
            init.log.clone(),
            init.applied_index,
        );
        core.set_commit_alone(init.commit_alone);
        let out = core.start(now_ms);
        (core, out)
    }

    fn step(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        self.handle(now_ms, input)
    }
}

/// Replays a trace of the replication core; Ok(number of steps after the
/// header) when every step gave exactly its recorded outputs.
pub fn replay(jsonl: &str) -> Result<usize, Mismatch> {
    replay_as::<Core>(jsonl)
}
