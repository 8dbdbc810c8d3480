//! Replayable traces of the sans-IO cores (style principle 2: "a recorded
//! JSONL trace replays a production incident"): the generic part every
//! core's trace shares. Owns the line format, the [`Recorder`] that writes
//! a trace while a core runs, and [`replay_as`], which rebuilds the core
//! and checks that the same inputs still give exactly the recorded outputs.
//! Each core crate implements [`Replayable`] and says what builds it
//! (`esc_repl::trace`, `esc_authority::trace`).
//!
//! # Format
//!
//! JSON lines, one object per line. The first line is the header: which
//! core, the format version, what the core was built from (`init`) at
//! `now_ms`, and what building it output:
//!
//! ```text
//! {"trace":"esc-repl","version":1,"now_ms":0,"init":{..},"outputs":[]}
//! ```
//!
//! Every further line is one call of the core's entry point, in call order:
//!
//! ```text
//! {"now_ms":20,"input":{"Propose":{"token":1,"payload":[119,49]}},"outputs":[{"Persist":{..}}]}
//! ```
//!
//! Inputs and outputs are in serde's default (externally tagged) JSON; byte
//! fields are arrays of numbers. Blank lines are skipped. Every field is
//! required and no other is accepted, so a trace from another format
//! version is refused instead of replayed with guesses.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::ops::Deref;

/// The format version in every header; bumped when a line's shape changes.
pub const VERSION: u32 = 1;

/// A deterministic core that a trace can rebuild and drive: the same
/// `Init` and the same inputs at the same times give the same outputs.
pub trait Replayable: Sized {
    /// The header's `trace` name: which core the trace is of.
    const TRACE: &'static str;
    /// What the core is built from (the header's `init`).
    type Init: Serialize + DeserializeOwned;
    type Input: Serialize + DeserializeOwned + Clone;
    type Output: Serialize + DeserializeOwned + PartialEq;
    /// Builds the core at `now_ms`, with what building it outputs.
    fn build(init: &Self::Init, now_ms: u64) -> (Self, Vec<Self::Output>);
    /// The core's one entry point.
    fn step(&mut self, now_ms: u64, input: Self::Input) -> Vec<Self::Output>;
}

/// The first line of a trace (`O`: the outputs, owned when read and
/// borrowed when written).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header<I, O> {
    trace: String,
    version: u32,
    now_ms: u64,
    init: I,
    outputs: O,
}

/// What every header has, whatever the core: read first, so a trace of
/// another core or version is named as such rather than malformed.
#[derive(Deserialize)]
struct Name {
    trace: String,
    version: u32,
}

/// Every further line: one call of the core's entry point.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Call<I, O> {
    now_ms: u64,
    input: I,
    outputs: O,
}

/// A core that writes its trace as it runs, one line per call, to `sink`
/// (none: it records nothing and costs nothing). It derefs to the core for
/// every query; changes go through [`Recorder::handle`] only (no
/// `DerefMut`), so nothing reaches the core unrecorded.
///
/// Recording never changes what the core does: a write error stops the
/// recording (kept for [`Recorder::finish`]), not the core; the line it
/// cut short is then the trace's last, and replays as malformed. Each
/// line is written in many small pieces: give it a `BufWriter` for a file.
pub struct Recorder<C: Replayable, W: Write> {
    core: C,
    sink: Option<W>,
    error: Option<io::Error>,
}

impl<C: Replayable, W: Write> Recorder<C, W> {
    /// Builds the core from `init` at `now_ms` and records the header.
    pub fn start(init: C::Init, now_ms: u64, sink: Option<W>) -> (Self, Vec<C::Output>) {
        let (core, outputs) = C::build(&init, now_ms);
        let mut rec = Recorder {
            core,
            sink,
            error: None,
        };
        rec.write(&Header {
            trace: C::TRACE.to_string(),
            version: VERSION,
            now_ms,
            init: &init,
            outputs: outputs.as_slice(),
        });
        (rec, outputs)
    }

    /// The core's entry point, recorded.
    pub fn handle(&mut self, now_ms: u64, input: C::Input) -> Vec<C::Output> {
        // The input is consumed by the core: keep a copy only when recording.
        let kept = self.recording().then(|| input.clone());
        let outputs = self.core.step(now_ms, input);
        if let Some(input) = kept {
            self.write(&Call {
                now_ms,
                input,
                outputs: outputs.as_slice(),
            });
        }
        outputs
    }

    /// Whether lines are being written.
    pub fn recording(&self) -> bool {
        self.sink.is_some() && self.error.is_none()
    }

    /// Where the lines go (a `Vec<u8>` holds the trace so far).
    pub fn sink(&self) -> Option<&W> {
        self.sink.as_ref()
    }

    /// Flushes and returns the sink; the first write error if one stopped
    /// the recording. None: there was no sink.
    pub fn finish(self) -> Option<io::Result<W>> {
        let mut sink = self.sink?;
        if let Some(e) = self.error {
            return Some(Err(e));
        }
        Some(sink.flush().map(|()| sink))
    }

    fn write(&mut self, line: &impl Serialize) {
        if !self.recording() {
            return;
        }
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let written = serde_json::to_writer(&mut *sink, line)
            .map_err(io::Error::from)
            .and_then(|()| sink.write_all(b"\n"));
        if let Err(e) = written {
            self.error = Some(e);
        }
    }
}

impl<C: Replayable, W: Write> Deref for Recorder<C, W> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.core
    }
}

/// Why a trace did not replay. Lines are numbered from 1 (the header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the trace is empty: its first line must be the header")]
    Empty,
    #[error("line {line}: not a trace line of this format: {error}")]
    Malformed { line: usize, error: String },
    #[error(
        "line {line}: a trace of {found:?} version {version}, not of {expected} version {VERSION}"
    )]
    Foreign {
        line: usize,
        found: String,
        version: u32,
        expected: &'static str,
    },
    /// The core gave other outputs than the recorded ones: `index` is the
    /// first that differs (JSON, or "nothing" where one list is shorter).
    #[error(
        "line {line} (now_ms {now_ms}, input {input}): output {index} differs: \
         recorded {recorded}, replayed {replayed}"
    )]
    Outputs {
        line: usize,
        now_ms: u64,
        /// The input as JSON ("construction" for the header).
        input: String,
        index: usize,
        recorded: String,
        replayed: String,
    },
}

/// Which core and format version a trace is of (its header's `trace` and
/// `version`), with the header's line number.
pub fn header_of(jsonl: &str) -> Result<(usize, String, u32), Mismatch> {
    let (line, text) = jsonl
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or(Mismatch::Empty)?;
    let name: Name = parse(line, text)?;
    Ok((line, name.trace, name.version))
}

/// Replays a trace of core `C`: builds it from the header, feeds every
/// input at its time and compares the outputs with the recorded ones; the
/// first difference ends the replay.
pub fn replay_as<C: Replayable>(jsonl: &str) -> Result<usize, Mismatch> {
    let mut lines = jsonl
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let (line, text) = lines.next().ok_or(Mismatch::Empty)?;
    let name: Name = parse(line, text)?;
    if name.trace != C::TRACE || name.version != VERSION {
        return Err(Mismatch::Foreign {
            line,
            found: name.trace,
            version: name.version,
            expected: C::TRACE,
        });
    }
    let header: Header<C::Init, Vec<C::Output>> = parse(line, text)?;
    let (mut core, outputs) = C::build(&header.init, header.now_ms);
    compare(
        line,
        header.now_ms,
        "construction",
        &header.outputs,
        &outputs,
    )?;
    let mut steps = 0;
    for (line, text) in lines {
        let call: Call<C::Input, Vec<C::Output>> = parse(line, text)?;
        let input = json(&call.input);
        let outputs = core.step(call.now_ms, call.input);
        compare(line, call.now_ms, &input, &call.outputs, &outputs)?;
        steps += 1;
    }
    Ok(steps)
}

fn parse<T: DeserializeOwned>(line: usize, text: &str) -> Result<T, Mismatch> {
    serde_json::from_str(text).map_err(|e| Mismatch::Malformed {
        line,
        error: e.to_string(),
    })
}

fn compare<O: Serialize + PartialEq>(
    line: usize,
    now_ms: u64,
    input: &str,
    recorded: &[O],
    replayed: &[O],
) -> Result<(), Mismatch> {
    if recorded == replayed {
        return Ok(());
    }
    let index = recorded
        .iter()
        .zip(replayed)
        .position(|(a, b)| a != b)
        .unwrap_or(recorded.len().min(replayed.len()));
    let at = |o: &[O]| o.get(index).map_or_else(|| "nothing".to_string(), json);
    Err(Mismatch::Outputs {
        line,
        now_ms,
        input: input.to_string(),
        index,
        recorded: at(recorded),
        replayed: at(replayed),
    })
}

fn json(value: &impl Serialize) -> String {
    // Serializing these types cannot fail: no maps with non-string keys.
    serde_json::to_string(value).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}
