//! Layer counts a config claims, checked against the tensor names of its weights before any model is built:
//! takes the names and the claimed count, gives Ok or one error naming the config. A config is data too: a
//! `num_layers` of 10⁹ would make the builder loop (and allocate) a billion times before any tensor is missed,
//! and one of 0 would silently ignore the weights' blocks.

use crate::error::{Error, Result};
use std::path::Path;

/// Blocks in `names` under any of `containers` (`transformer_blocks` in `transformer_blocks.7.attn.to_q.weight`):
/// the highest index + 1, or 0.
pub fn count(names: &[String], containers: &[&str]) -> usize {
    names
        .iter()
        .filter_map(|n| {
            let parts: Vec<&str> = n.split('.').collect();
            parts.windows(2).find(|w| containers.contains(&w[0])).and_then(|w| w[1].parse::<usize>().ok())
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// What a config claims against what the weights hold.
pub struct Claim<'a> {
    pub component: &'a str,
    pub config: &'a Path,
    /// The config field (`num_layers`).
    pub field: &'a str,
    pub claimed: usize,
    pub containers: &'a [&'a str],
    /// The (first) weight file, blamed when it holds no such blocks at all.
    pub weights: &'a Path,
}

/// The claimed count must equal the blocks the weights hold (`at_least`: must not exceed them — a text encoder
/// of which only the first layers are read).
pub fn check(claim: &Claim, names: &[String], at_least: bool) -> Result<()> {
    let held = count(names, claim.containers);
    let ok = if at_least { claim.claimed <= held } else { claim.claimed == held };
    if ok {
        return Ok(());
    }
    if held == 0 {
        return Err(Error::model(
            claim.weights,
            format!(
                "holds no {}.N tensors: these are not {} weights for this model (check the file given for it)",
                claim.containers[0], claim.component
            ),
        ));
    }
    Err(Error::model(
        claim.config,
        format!(
            "invalid config: {} {} but the {} weights hold {held} ({}.0 to {}.{}); the config does not belong to \
             these weights",
            claim.field,
            claim.claimed,
            claim.component,
            claim.containers[0],
            claim.containers[0],
            held - 1
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_by_container() {
        let names: Vec<String> = [
            "transformer_blocks.0.attn.to_q.weight",
            "transformer_blocks.2.attn.to_q.weight",
            "single_transformer_blocks.5.proj_out.weight",
            "x_embedder.weight",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(count(&names, &["transformer_blocks", "double_blocks"]), 3);
        assert_eq!(count(&names, &["single_transformer_blocks"]), 6);
        assert_eq!(count(&names, &["layers"]), 0);
        let claim = |n| Claim {
            component: "transformer",
            config: Path::new("c.json"),
            field: "num_layers",
            claimed: n,
            containers: &["transformer_blocks"],
            weights: Path::new("w.safetensors"),
        };
        assert!(check(&claim(3), &names, false).is_ok());
        assert!(check(&claim(1_000_000_000), &names, false).unwrap_err().to_string().contains("num_layers 1000000000"));
        assert!(check(&claim(0), &names, false).is_err());
        let none = check(&claim(3), &names[3..], false).unwrap_err().to_string();
        assert!(none.contains("w.safetensors") && none.contains("not transformer weights"), "{none}");
        assert!(check(&claim(2), &names, true).is_ok());
    }
}
