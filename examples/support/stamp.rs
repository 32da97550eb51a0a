//! Kernel receive timestamps for the benchmarks' clients: when a read's bytes reached the socket
//! (SO_TIMESTAMPNS), as opposed to when the reading task got round to them. Both benchmarks include this
//! file with `#[path]`.

use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Asks the kernel to stamp what `socket` receives.
pub(crate) fn enable(socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(std::io::Error::from)
}

/// Room for one SCM_TIMESTAMPNS control message: `control` for [`recv`].
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::time::TimeSpec)
}

/// One non-blocking `recvmsg`: the bytes read, and the kernel's receive timestamp (for TCP, that of the
/// newest segment the read consumed). Call it inside `try_io`, which turns WouldBlock into readiness.
pub(crate) fn recv(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, Option<SystemTime>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(control), MsgFlags::empty()).map_err(std::io::Error::from)?;
    let stamp = msg.cmsgs().ok().and_then(|mut messages| {
        messages.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(UNIX_EPOCH + Duration::new(u64::try_from(ts.tv_sec()).ok()?, u32::try_from(ts.tv_nsec()).ok()?))
            }
            _ => None,
        })
    });
    Ok((msg.bytes, stamp))
}
