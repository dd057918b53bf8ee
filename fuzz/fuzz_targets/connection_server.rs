//! A server `Connection` fed arbitrary client bytes in arbitrary pieces, answering like an
//! echo server; see `duplex_fuzz::run_connection` for the input layout and the invariants.
#![no_main]

use duplex_proto::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_fuzz::run_connection(Role::Server, data));
