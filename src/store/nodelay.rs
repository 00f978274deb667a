//! sqlx 0.9.0 opens PostgreSQL TCP connections without `TCP_NODELAY` (a regression: sqlx issue
//! #4335, fixed upstream after 0.9.0 and not released yet). With Nagle's algorithm on, a
//! statement whose message spans more than one TCP segment waits for the server's delayed ACK:
//! about 40 ms on Linux, for every multi-row statement of a batch (on loopback, anything over
//! 64 KB; over a real network, anything over ~1.4 KB). That stall, not PostgreSQL, was most of
//! a step batch's time.
//!
//! sqlx gives no access to its socket, so right after it connects we set `TCP_NODELAY` on every
//! TCP socket this process has open (found in `/proc/self/fd`). Turning Nagle off is what
//! libpq, the `redis` crate and hyper do anyway, so sockets that already had it lose nothing.
//! Remove this when sqlx sets the option itself.

/// Sets `TCP_NODELAY` on every open TCP socket of this process. Non-TCP descriptors refuse
/// the option, which is ignored. Linux only; elsewhere it does nothing.
pub fn disable_nagle_on_open_sockets() {
    #[cfg(target_os = "linux")]
    {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let is_socket =
                std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            let on: libc::c_int = 1;
            // SAFETY: setsockopt only reads `on` for the given length; a descriptor that is not
            // a TCP socket (or was closed meanwhile) makes it fail, and the failure is ignored.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}
