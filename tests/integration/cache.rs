//! Step caches (`--cache fbcache[:T]`, `--cache taylorseer[:ORDER,INTERVAL]`) against diffusers' own hooks on
//! tests/fixtures/cases-cache.json (scripts/make_cache_fixtures.py): `FirstBlockCacheConfig` and
//! `TaylorSeerCacheConfig` on the tiny FLUX.1 dev and schnell pipelines (text-to-image, true CFG, img2img) and
//! FLUX.2 klein (text-to-image, a reference, the base model's CFG), CPU generator.
//!
//! Bar: 45 dB, as every pipeline. Each case also checks that we skipped exactly what diffusers' hook skipped
//! (`cache_skipped` in --json), and records how far diffusers' own output moves without the cache, with the
//! case's other setting and, under CFG, with one cache shared by both passes: measured 10.6–39.8 dB, held under
//! 42 dB, so a cache that skipped other steps, or none, or mixed the passes, could not pass.

use crate::common::*;
use crate::klein::klein_args;
use crate::modes::{case_args, mode_cases};
use serde_json::Value;
use std::path::Path;

const MIN_PSNR_DB: f64 = 45.0;
const MAX_SENSITIVITY_DB: f64 = 42.0;

/// The flags of one case: its pipeline's flags, `--cache` and `--json`.
fn cache_args(case: &Value, out: &Path) -> Vec<String> {
    let mut a = if case["pipeline"] == "Flux2KleinPipeline" { klein_args(case, out) } else { case_args(case, out) };
    a.extend(["--cache".into(), case["cache"].as_str().unwrap().into(), "--json".into()]);
    a
}

#[test]
fn caches_match_diffusers_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut failures, mut report) = (vec![], vec![]);
    for case in mode_cases("cases-cache.json") {
        let name = case["name"].as_str().unwrap();
        for (what, db) in case["sensitivity_psnr_db"].as_object().unwrap() {
            if db.as_f64().unwrap() > MAX_SENSITIVITY_DB {
                failures.push(format!("{name}: {what} moves diffusers' output only to {db} dB"));
            }
        }
        let out = dir.path().join(format!("{name}.png"));
        let o = bin().args(cache_args(&case, &out)).output().unwrap();
        if !o.status.success() {
            failures.push(format!("{name}: exit {:?}: {}", o.status.code(), stderr(&o)));
            continue;
        }
        let json: Value = serde_json::from_slice(&o.stdout).unwrap();
        let skipped = &json["cache_skipped"]["skipped"];
        if *skipped != case["skipped"] {
            failures.push(format!("{name}: skipped {skipped}, diffusers {}", case["skipped"]));
        }
        let db = psnr(&out, &fixtures().join(case["expected"].as_str().unwrap()));
        report.push(format!("{name}: {db:.1} dB, skipped {skipped}"));
        if db < MIN_PSNR_DB {
            failures.push(format!("{name}: {db:.2} dB < {MIN_PSNR_DB} dB"));
        }
    }
    eprintln!("cases-cache.json: {}", report.join(", "));
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

/// The tiny dev text-to-image case of the fixtures with `extra` flags, into `out`.
fn dev_case(extra: &[&str], out: &Path) -> std::process::Output {
    let case = mode_cases("cases-cache.json").into_iter().find(|c| c["name"] == "cache-dev-fb-a").unwrap();
    let mut a = case_args(&case, out);
    a.retain(|x| x != "-q");
    // A flag already there takes the new value; others are appended.
    for pair in extra.chunks(2) {
        match a.iter().position(|x| x == pair[0]) {
            Some(i) if pair.len() == 2 => a[i + 1] = pair[1].to_string(),
            _ => a.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    bin().args(a).output().unwrap()
}

/// The plan line names the cache, the PNG records it with what it skipped, and --from-metadata makes the same
/// image again (the cache included: without it the image differs).
#[test]
fn recorded_and_reproduced() {
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    let o = dev_case(&["--cache", "fbcache:0.6"], &first);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("cache fbcache:0.6, seed"), "plan line: {err}");
    assert!(err.contains("cache fbcache:0.6: skipped 16 of 36 blocks"), "{err}");
    let again = t.path().join("again.png");
    let f = first.to_string_lossy().into_owned();
    let a = again.to_string_lossy().into_owned();
    let o = bin().args(["--from-metadata", &f, "--allow-metadata-paths", "--json", "-q", "-o", &a]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["cache"], "fbcache:0.6");
    assert_eq!(json["cache_skipped"]["skipped"], 16);
    assert!(psnr(&first, &again).is_infinite(), "--from-metadata: another image");
    let plain = t.path().join("plain.png");
    assert!(dev_case(&[], &plain).status.success());
    assert!(psnr(&first, &plain) < 40.0, "the cache changes the image");
    // `--cache off` overrides the record's cache: the plain image again.
    let off = t.path().join("off.png");
    let o = bin()
        .args(["--from-metadata", &f, "--allow-metadata-paths", "--cache", "off", "--json", "-q", "-o"])
        .arg(&off)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["cache"].is_null(), "{json}");
    assert!(psnr(&plain, &off).is_infinite(), "--cache off: not the uncached image");
}

/// A setting at which the cache never skips says so in --json; without --cache the record has no cache.
#[test]
fn never_skipping_is_reported() {
    let t = tempfile::tempdir().unwrap();
    for (cache, steps) in [("fbcache:0", "12"), ("taylorseer", "3")] {
        let out = t.path().join("o.png");
        let o = dev_case(&["--cache", cache, "--steps", steps, "--json", "-q"], &out);
        assert!(o.status.success(), "{}", stderr(&o));
        let json: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(json["cache_skipped"]["skipped"], 0, "{cache}");
        let note = json["cache_skipped"]["note"].as_str().unwrap_or_default();
        assert!(note.starts_with("never skipped"), "{cache}: {json}");
        std::fs::remove_file(&out).unwrap();
    }
    let out = t.path().join("o.png");
    let o = dev_case(&["--json", "-q"], &out);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json.get("cache").is_none() && json.get("cache_skipped").is_none(), "{json}");
}

/// Bad settings: one error line naming the problem, exit 2, nothing written (flags and manifest cells alike).
#[test]
fn bad_settings_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    for (value, needle) in [
        ("fbcache:-0.1", "must be a number ≥ 0"),
        ("fbcache:nan", "must be a number ≥ 0"),
        ("fbcache:x", "is not a number"),
        ("taylorseer:0,5", "order \"0\" must be a whole number ≥ 1"),
        ("taylorseer:1,0", "interval \"0\" must be a whole number ≥ 1"),
        ("teacache", "unknown cache \"teacache\""),
    ] {
        let o = dev_case(&["--cache", value], &out);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains(needle), "{value}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
        assert!(!out.exists());
    }
    let manifest = t.path().join("m.csv");
    std::fs::write(&manifest, "prompt,cache\na cat,taylorseer:0\n").unwrap();
    let m = manifest.to_string_lossy().into_owned();
    let model = fixtures().join("tiny-dev").to_string_lossy().into_owned();
    let o = bin().args(["--model", &model, "--manifest", &m, "--width", "32", "--height", "32"]).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("manifest line 2: cache taylorseer:0"), "{err}");
}
