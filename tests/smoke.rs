#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::fs;

#[test]
fn merged_view_and_copy_up() {
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "old");
    put(&s.lower(0).join("f"), "top");
    put(&s.lower(1).join("f"), "bottom");
    let m = s.mount(2);
    assert_eq!(fs::read_to_string(m.path("f")).unwrap(), "top");
    fs::write(m.path("d/a"), "new").unwrap();
    assert_eq!(fs::read_to_string(m.path("d/a")).unwrap(), "new");
    assert_eq!(fs::read_to_string(s.upper().join("d/a")).unwrap(), "new");
    assert_eq!(fs::read_to_string(s.lower(1).join("d/a")).unwrap(), "old");
}
