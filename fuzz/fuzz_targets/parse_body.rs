//! Feeds arbitrary bytes to the response parser: it must return `Ok` or `Err`, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ccc_etl::ccc::wire::parse_body(data);
});
