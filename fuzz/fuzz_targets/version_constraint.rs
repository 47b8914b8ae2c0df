//! Version constraints never panic, and the highest match of a list always matches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pack_controller::versions::{VersionConstraint, highest_match, parse_version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (constraint, versions) = text.split_once('\n').unwrap_or((text, "1.0.0 0.1.0 v2.3.4-rc.1"));
    let Ok(c) = VersionConstraint::parse(constraint) else { return };
    let list: Vec<&str> = versions.split_whitespace().collect();
    if let Some(best) = highest_match(&c, list.iter().copied()) {
        assert!(c.matches(&parse_version(best).unwrap()));
    }
});
