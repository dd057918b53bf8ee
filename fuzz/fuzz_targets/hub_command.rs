//! The hub's command parser on arbitrary bytes: a WebSocket text message as a command
//! (`{"id":..,"op":..}`), and the same bytes as the body of `POST /api/publish`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    duplex_hub::fuzzing::parse_command(data);
});
