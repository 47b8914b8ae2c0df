//! Parsing an untrusted repository index never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pack_controller::index::parse_index(data, "https://charts.example.com/repo");
});
