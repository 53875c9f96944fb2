//! clap adapters for the library's types: named enums (`Quant`, `ResizeMode`, `RngKind`) parse through their
//! name tables, so `--help` lists the choices while the library itself never depends on clap.

use clap::builder::{PossibleValuesParser, TypedValueParser};

/// A value parser that accepts exactly the names in `names` and gives their values.
pub fn named<T: Copy + Send + Sync + 'static>(names: &'static [(&'static str, T)]) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names.iter().map(|(n, _)| *n))
        .map(move |s| names.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).expect("clap accepted only these names"))
}
