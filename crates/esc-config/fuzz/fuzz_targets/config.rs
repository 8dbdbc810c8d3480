//! Any text as `esc.toml`: parsed and validated, or refused with an error
//! that names the file, never a panic; a file that is accepted renders
//! back to TOML that is accepted again (what `escadm ha set` writes).
#![no_main]

use esc_config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("esc.toml")) {
        Ok(cfg) => {
            let again = toml::to_string_pretty(&cfg).expect("a valid config renders");
            let back = Config::parse(&again, Path::new("esc.toml"))
                .expect("a rendered valid config parses again");
            assert_eq!(back, cfg);
        }
        Err(e) => {
            assert!(e.to_string().contains("esc.toml"), "{e}");
        }
    }
});
