//! Replayable traces of the role authority and the witness (style
//! principle 2: "a recorded JSONL trace replays a production incident").
//! Owns the trace format of both cores, the [`Recorder`] that writes it
//! while a core runs, and [`replay`], which rebuilds the core and checks
//! that the same inputs still give exactly the recorded outputs.
//!
//! # Format
//!
//! JSON lines, one object per line. The first line is the header: which
//! core (`esc-authority` or `esc-witness`), what it was built from at
//! `now_ms`, and what building it output (always nothing for these two):
//!
//! ```text
//! {"trace":"esc-authority","version":1,"now_ms":0,"init":{"witness":true,..},"outputs":[]}
//! {"trace":"esc-witness","version":1,"now_ms":0,"init":{"state":{..},"lease_ms":600},"outputs":[]}
//! ```
//!
//! `init` is the authority's [`Config`], or a [`WitnessInit`] (what
//! [`Witness::new`] takes). Every further line is one call of the core,
//! in call order:
//!
//! ```text
//! {"now_ms":20,"input":{"Switchover":{"id":7}},"outputs":[{"Admission":false}]}
//! {"now_ms":31,"input":{"Request":{"node":"esc-1","request":{"Release":{"epoch":1}}}},
//!  "outputs":[{"reply":{"Released":{"epoch":1}},"persist":false}]}
//! ```
//!
//! For the authority `input` is an [`Input`] and `outputs` the [`Output`]s
//! of [`Authority::handle`]; for the witness `input` is a [`WitnessInput`]
//! (a request, or a closed connection) and `outputs` the [`Step`] of
//! [`Witness::handle`] (none for a closed connection). All are in serde's
//! default (externally tagged) JSON. Blank lines are skipped. Every field is
//! required and no other is accepted, so a trace from another format
//! version is refused instead of replayed with guesses.
//!
//! The generic part ([`Replayable`], [`Recorder`], [`replay_as`],
//! [`Mismatch`]) is `esc_trace`'s, shared with `esc_repl::trace`.

use crate::authority::{Authority, Config, Input, Output};
use crate::witness::{Request, Step, Witness, WitnessState};
use serde::{Deserialize, Serialize};
use std::io::Write;

pub use esc_trace::{replay_as, Mismatch, Recorder, Replayable, VERSION};

impl Replayable for Authority {
    const TRACE: &'static str = "esc-authority";
    type Init = Config;
    type Input = Input;
    type Output = Output;

    /// Building the authority outputs nothing: it acts on its first input.
    fn build(cfg: &Config, _now_ms: u64) -> (Authority, Vec<Output>) {
        (Authority::new(cfg.clone()), Vec::new())
    }

    fn step(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        self.handle(now_ms, input)
    }
}

/// What [`Witness::new`] takes besides the time (the header's `now_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessInit {
    /// The durable state it starts (or restarts) with.
    pub state: WitnessState,
    pub lease_ms: u64,
}

/// The witness's two entry points as one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WitnessInput {
    /// [`Witness::handle`]: a request from `node` (its authenticated name).
    Request { node: String, request: Request },
    /// [`Witness::disconnected`]: `node`'s connection closed.
    Disconnected { node: String },
}

impl Replayable for Witness {
    const TRACE: &'static str = "esc-witness";
    type Init = WitnessInit;
    type Input = WitnessInput;
    type Output = Step;

    fn build(init: &WitnessInit, now_ms: u64) -> (Witness, Vec<Step>) {
        (
            Witness::new(init.state.clone(), init.lease_ms, now_ms),
            Vec::new(),
        )
    }

    fn step(&mut self, now_ms: u64, input: WitnessInput) -> Vec<Step> {
        match input {
            WitnessInput::Request { node, request } => vec![self.handle(now_ms, &node, request)],
            WitnessInput::Disconnected { node } => {
                self.disconnected(now_ms, &node);
                Vec::new()
            }
        }
    }
}

/// The witness's entry points on a [`Recorder`].
pub trait WitnessRecorder {
    /// [`Witness::handle`], recorded.
    fn request(&mut self, now_ms: u64, node: &str, request: Request) -> Step;
    /// [`Witness::disconnected`], recorded.
    fn disconnected(&mut self, now_ms: u64, node: &str);
}

impl<W: Write> WitnessRecorder for Recorder<Witness, W> {
    fn request(&mut self, now_ms: u64, node: &str, request: Request) -> Step {
        let node = node.to_string();
        let mut out = self.handle(now_ms, WitnessInput::Request { node, request });
        // `Witness::step` answers every request with exactly one step.
        out.pop().expect("a request has a step")
    }

    fn disconnected(&mut self, now_ms: u64, node: &str) {
        let node = node.to_string();
        self.handle(now_ms, WitnessInput::Disconnected { node });
    }
}

/// Replays a trace of the role authority or of the witness (its header
/// says which); Ok(number of steps after the header) when every step gave
/// exactly its recorded outputs.
pub fn replay(jsonl: &str) -> Result<usize, Mismatch> {
    let (line, trace, version) = esc_trace::header_of(jsonl)?;
    if trace == <Authority as Replayable>::TRACE {
        replay_as::<Authority>(jsonl)
    } else if trace == <Witness as Replayable>::TRACE {
        replay_as::<Witness>(jsonl)
    } else {
        Err(Mismatch::Foreign {
            line,
            found: trace,
            version,
            expected: "esc-authority or esc-witness",
        })
    }
}
