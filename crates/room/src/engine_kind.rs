//! Which query engine the room runs (`accord room serve --engine`, `engine` in room.toml).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::RoomError;

/// The query engine of every sealed agreement (docs/DESIGN.md, "The query engine").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryEngine {
    /// DataFusion in the room's process, over the overlap in memory (the default).
    #[default]
    SingleNode,
    /// Apache DataFusion Ballista in standalone mode: an in-process scheduler and executor
    /// on loopback, reading the overlap from Parquet in the data directory. Needs a build
    /// with the `ballista` feature.
    BallistaStandalone,
}

impl QueryEngine {
    /// The names `--engine` and room.toml accept.
    pub const NAMES: [&'static str; 2] = ["single-node", "ballista-standalone"];

    /// Whether this build can run the engine.
    pub fn compiled_in(self) -> bool {
        match self {
            QueryEngine::SingleNode => true,
            QueryEngine::BallistaStandalone => cfg!(feature = "ballista"),
        }
    }

    /// Refuses an engine this build cannot run (never silently falls back).
    pub fn check(self) -> Result<(), RoomError> {
        if self.compiled_in() {
            return Ok(());
        }
        Err(RoomError::InvalidArgument(format!(
            "the query engine {self} is not compiled into this accord: build it with \
             `cargo build --release -p accord-cli --features ballista` (or start the room with \
             --engine single-node)"
        )))
    }
}

impl fmt::Display for QueryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryEngine::SingleNode => Self::NAMES[0],
            QueryEngine::BallistaStandalone => Self::NAMES[1],
        })
    }
}

impl FromStr for QueryEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-node" => Ok(QueryEngine::SingleNode),
            "ballista-standalone" => Ok(QueryEngine::BallistaStandalone),
            other => Err(format!(
                "unknown query engine {other:?}: use single-node or ballista-standalone"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_single_node_is_always_there() {
        for name in QueryEngine::NAMES {
            assert_eq!(name.parse::<QueryEngine>().unwrap().to_string(), name);
        }
        assert!("ballista".parse::<QueryEngine>().is_err());
        assert!(QueryEngine::default().check().is_ok());
        let ballista = QueryEngine::BallistaStandalone.check();
        if cfg!(feature = "ballista") {
            assert!(ballista.is_ok());
        } else {
            let e = ballista.unwrap_err().to_string();
            assert!(e.contains("--features ballista"), "{e}");
        }
    }
}
