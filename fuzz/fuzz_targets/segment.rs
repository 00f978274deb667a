//! The Segment body parser on any bytes, as sent and as if gzipped (the first byte says which).
#![no_main]

#[path = "../../tests/it/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((flags, body)) = data.split_first() {
        checks::parse_every_way(body, flags & 1 == 1);
    }
});
