//! Advice: what to change to need less memory, each piece with the evidence it rests on.
//!
//! The advice engine (`memwarden-report`'s `advice` module) writes these into the run
//! report (`advice`) and the ledger records them with the run, so one definition serves the
//! report, the ledger and every renderer. Documented in `docs/report-schema.md`.

use serde::{Deserialize, Serialize};

use crate::report::StackFrame;

/// The technique a piece of advice applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Technique {
    /// Stream instead of materialising: read a file or dataset in pieces, or memory-map it.
    Stream,
    /// Release what is retained: memory held at exit, or a structure that only grows.
    Release,
    /// Compact structures: many small Python objects where an array would do.
    Compact,
    /// Fewer temporaries: a line that allocates many times what it keeps.
    Temporaries,
    /// A serialization that loads without copies: a load peaking at about twice its payload.
    Serialization,
    /// Budget and limit: the headroom the peak left, and what the gap between heap and
    /// resident memory is made of.
    Headroom,
}

impl Technique {
    /// The technique as users know it, for headings.
    pub fn title(self) -> &'static str {
        match self {
            Technique::Stream => "Stream instead of materialising",
            Technique::Release => "Release what is retained",
            Technique::Compact => "Use compact structures",
            Technique::Temporaries => "Avoid temporaries",
            Technique::Serialization => "Load without copies",
            Technique::Headroom => "Budget and headroom",
        }
    }
}

/// One piece of advice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// The technique.
    pub technique: Technique,
    /// The rule that found it (its module's name in `memwarden-report/src/advice/`).
    pub rule: String,
    /// The line it is about (innermost Python frame: file, line, function); `null` for
    /// advice about the run as a whole.
    pub frame: Option<StackFrame>,
    /// The text of that line, as captured when the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What the measurement shows, in numbers.
    pub evidence: String,
    /// The bytes the fix would save at the peak, estimated; `null` when no estimate can be
    /// made honestly.
    pub saving_bytes: Option<u64>,
    /// How the saving was estimated.
    pub saving_basis: String,
    /// A short, concrete fix.
    pub fix: String,
}

impl Advice {
    /// `file:line function` of the line, or `the run` for advice about the whole run.
    pub fn location(&self) -> String {
        match &self.frame {
            Some(frame) if frame.line > 0 => {
                format!("{}:{}  {}", frame.file, frame.line, frame.function)
            }
            Some(frame) => format!("{}  {}", frame.file, frame.function),
            None => "the run".to_owned(),
        }
    }
}
