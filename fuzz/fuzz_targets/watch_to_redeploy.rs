//! The watch-to-redeploy parser never panics, and whatever it accepts re-parses to the same targets.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Ok(targets) = common::annotation::parse_watch_targets(value) {
        assert!(!targets.is_empty());
        let rendered = targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        assert_eq!(common::annotation::parse_watch_targets(&rendered).unwrap(), targets);
    }
});
