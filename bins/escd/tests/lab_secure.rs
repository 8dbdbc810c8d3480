//! Issue 14, "Done when", second item: HTTPS through the VIP with a
//! certificate the lab makes, and tcpdump on both nodes sees no deployment
//! name on the replication, witness or HTTPS ports while a plain-HTTP
//! control is visible (`esc_lab::secure`).

use esc_lab::cluster::Bins;
use std::path::Path;

#[test]
fn the_wire_shows_no_deployment_data() {
    if !esc_lab::allowed() {
        return;
    }
    let bins = Bins::beside(Path::new(env!("CARGO_BIN_EXE_escd")))
        .expect("build escadm first: scripts/test.sh does (cargo build --workspace --bins)");
    let f = esc_lab::secure::run("ls", &bins).expect("lab run");
    eprintln!("{}", serde_json::to_string(&f).unwrap_or_default());
    assert!(f.pass(), "{f:#?}");
}
