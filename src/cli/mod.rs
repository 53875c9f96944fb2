//! Command line, in two stages (as ripgrep's flags → hiargs): `args` is clap's raw view of the flags; `expand`
//! turns them (plus a manifest or a PNG's stored record) into a [`Batch`](crate::batch::Batch) of validated
//! requests without touching the network or standard input. `values` adapts library enums to clap; `manifest`
//! reads CSV / JSON-lines item lists.

mod args;
mod expand;
pub mod manifest;
mod values;

pub use args::{parse_budget, Args, Command, DTypeArg, SmokeArgs};
pub use expand::{dtype_for, parse_device, parse_shard};
