//! Helpers shared by the integration tests that need more than `common`: a private
//! redis-server, a recording broker handler.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

pub mod recorder;
pub mod redis;
