//! Send throughput to a local SMTP sink (written below).
fn main() {}
