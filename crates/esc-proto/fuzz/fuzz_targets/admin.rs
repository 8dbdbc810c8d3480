//! Any line on the admin socket: a request escd decodes, or an answer
//! escadm decodes (a status among them). Refused cleanly or decoded, never
//! a panic; a decoded request or answer encodes and decodes back to itself.
#![no_main]

use esc_proto::{AdminRequest, AdminResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<AdminRequest>(data) {
        let line = serde_json::to_vec(&req).expect("a request encodes");
        let back: AdminRequest = serde_json::from_slice(&line).expect("and decodes");
        assert_eq!(back, req);
        let _ = req.timeout(std::time::Duration::from_secs(5));
        let _ = req.logged_verbatim();
    }
    if let Ok(resp) = serde_json::from_slice::<AdminResponse>(data) {
        let line = serde_json::to_vec(&resp).expect("an answer encodes");
        let back: AdminResponse = serde_json::from_slice(&line).expect("and decodes");
        assert_eq!(back, resp);
    }
});
