//! Names for the library's fieldless enums (resize modes, quantization formats, generators): one table per enum
//! gives `Display`, `FromStr` (an error listing the valid names), serde as a string and `NAMES` for front ends
//! (the CLI adapts them to clap in `cli::values`; the library itself knows nothing of clap).

/// `named_enum!(Type, "what it is", [Variant = "name", ...])`
macro_rules! named_enum {
    ($ty:ident, $what:literal, [$($v:ident = $name:literal),+ $(,)?]) => {
        impl $ty {
            /// Every value with its name, in declaration order.
            pub const NAMES: &'static [(&'static str, $ty)] = &[$(($name, $ty::$v)),+];

            /// The name as flags, files and metadata spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$v => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                Self::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s.trim())).map(|(_, v)| *v).ok_or_else(|| {
                    let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                    format!("unknown {} {s:?}; expected one of {}", $what, names.join(", "))
                })
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.as_str().to_string()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                s.parse()
            }
        }
    };
}

pub(crate) use named_enum;
