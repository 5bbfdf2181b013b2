#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_line.rs"]
mod check_line;

fuzz_target!(|data: &[u8]| check_line::check(data));
